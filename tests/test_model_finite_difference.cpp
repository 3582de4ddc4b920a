// Finite-difference check of the whole model: the analytic gradient of
//   L = cross_entropy + sum of router losses
// with respect to sampled coordinates of every parameter tensor (embedding, norms, attention,
// dense FFN, router, experts, shared experts, LM head) is compared with central differences.
// Coordinates whose perturbation changes any MoE layer's routing are skipped (L is not
// differentiable there); the test fails if more than 10% are skipped. The MoE cases weight
// their router losses by about 1, so that the balancing and z-losses' gradients are a large
// part of the routers' (an aux or z gradient 10% off fails). Cases of over 256 tokens are
// left to the reference test: so many tokens flip some routing at almost every coordinate.
#include <gtest/gtest.h>

#include <cmath>

#include "model/transformer.h"
#include "model_cases.h"

namespace moe {
namespace {

constexpr double kStep = 1e-3;    // larger steps meet the curvature of sharp softmaxes
constexpr double kAbsTol = 3e-4;  // fp32 round-off of the loss is ~1e-4 after dividing by 2 kStep
constexpr double kRelTol = 2e-2;  // pass when |analytic - numeric| <= kAbsTol + kRelTol |numeric|
constexpr int kSamplesPerTensor = 12;

// Compares the analytic gradient with central differences at sampled coordinates of every
// parameter tensor of model case `c`.
void check_gradients(const test::ModelCase& c) {
  const ModelConfig& cfg = c.config;
  const int64_t T = c.batch * c.seq;

  ParamStore store;
  Transformer model(cfg, store, 5);
  store.allocate();
  Rng rng(99);
  rng.fill_normal(store.values().span(), 0.0f, 0.3f);
  for (const auto& e : store.entries())
    if (e.name.ends_with("norm.weight"))
      for (float& w : store.value(e.ref)) w = 1.0f + 0.3f * w;
  std::vector<int32_t> tokens(T), targets(T);
  for (int64_t t = 0; t < T; ++t) {
    tokens[t] = static_cast<int32_t>(rng.next_u64() % cfg.vocab_size);
    targets[t] = static_cast<int32_t>(rng.next_u64() % cfg.vocab_size);
  }
  targets[1] = -1;

  ModelStepOptions eval;
  eval.training = c.training;
  eval.compute_grad = false;
  auto loss = [&]() {
    return model.forward(tokens, targets, c.batch, c.seq, eval) + model.router_loss();
  };
  auto routing = [&]() {
    std::vector<int32_t> sig;
    for (int64_t l = 0; l < model.num_layers(); ++l)
      if (const MoeLayer* m = model.moe_layer(l)) {
        sig.insert(sig.end(), m->plan().expert.begin(), m->plan().expert.end());
        auto kept = m->dispatcher().kept_assignments();
        sig.insert(sig.end(), kept.begin(), kept.end());
      }
    return sig;
  };

  ModelStepOptions train;
  train.training = c.training;
  model.forward(tokens, targets, c.batch, c.seq, train);
  const auto base = routing();
  store.zero_grads();
  model.backward();
  const std::vector<float> grads(store.grads().span().begin(), store.grads().span().end());

  int64_t checked = 0, skipped = 0;
  for (const auto& e : store.entries()) {
    auto values = store.value(e.ref);
    for (int s = 0; s < kSamplesPerTensor; ++s) {
      const int64_t i = static_cast<int64_t>(rng.next_u64() % values.size());
      const float saved = values[i];
      values[i] = saved + static_cast<float>(kStep);
      const double plus = loss();
      const bool same_plus = routing() == base;
      values[i] = saved - static_cast<float>(kStep);
      const double minus = loss();
      const bool same_minus = routing() == base;
      values[i] = saved;
      if (!same_plus || !same_minus) {
        ++skipped;
        continue;
      }
      const double numeric = (plus - minus) / (2 * kStep);
      const double analytic = grads[e.ref.offset + i];
      EXPECT_NEAR(analytic, numeric, kAbsTol + kRelTol * std::abs(numeric))
          << e.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_LE(skipped, (checked + skipped) / 10) << skipped << " coordinates changed routing";
  EXPECT_GT(checked, 0);
}

class ModelFiniteDifference : public testing::TestWithParam<std::string> {};

TEST_P(ModelFiniteDifference, GradientsMatchCentralDifferences) {
  check_gradients(test::load_model_cases().at(GetParam()));
}

// A small model in the shape of the Hugging Face architectures' tests below: 3 blocks, GQA,
// softmax top-2 of 4 experts, the router losses weighted about 1.
test::ModelCase hf_like_case() {
  test::ModelCase c;
  c.batch = 2;
  c.seq = 5;
  ModelConfig& m = c.config;
  m.vocab_size = 29;
  m.hidden_size = 16;
  m.intermediate_size = 20;
  m.num_hidden_layers = 3;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.max_position_embeddings = 8;
  MoeConfig e;
  e.hidden_size = 16;
  e.moe_intermediate_size = 10;
  e.num_experts = 4;
  e.top_k = 2;
  e.router_type = RouterType::SoftmaxTopK;
  e.aux_loss_coeff = 1.0f;
  m.moe = e;
  return c;
}

// Qwen2-MoE's features that train: q/k/v biases, a dense block among MoE ones by
// mlp_only_layers, softmax top-k gates left unnormalised, the sigmoid-gated shared expert.
TEST(ModelFiniteDifferenceHf, Qwen2MoeFeaturesTrain) {
  test::ModelCase c = hf_like_case();
  c.config.qkv_bias = true;
  c.config.mlp_only_layers = {1};
  MoeConfig& e = *c.config.moe;
  e.norm_topk_prob = false;
  e.n_shared_experts = 1;
  e.shared_expert_intermediate_size = 12;
  e.shared_expert_gate = true;
  ASSERT_FALSE(c.config.is_moe_layer(1));
  check_gradients(c);
}

// OLMoE's: RMSNorm over the whole q and k projections and the clip_qkv clamp, here with q/k/v
// biases too. At 2 a few percent of the values are clamped (the gradient test fails when the
// clamp's mask is left out); at 1 so many lie near the bound that perturbations cross it.
TEST(ModelFiniteDifferenceHf, OlmoeFeaturesTrain) {
  test::ModelCase c = hf_like_case();
  c.config.qk_norm = true;
  c.config.clip_qkv = 2.0f;
  c.config.qkv_bias = true;
  check_gradients(c);
}

std::vector<std::string> small_case_names() {
  std::vector<std::string> names;
  for (const auto& [name, c] : test::load_model_cases())
    if (c.batch * c.seq <= 256) names.push_back(name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Cases, ModelFiniteDifference, testing::ValuesIn(small_case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moe
