// Causality of evaluation: in eval mode a position's logits depend only on that position and
// the earlier ones of its own sequence. For every routing setup, at 1 and 2 threads:
//   (a) the full forward equals the inference engine over the same weights, token by token
//       and in two prefills (7 tokens, then the rest onto the filled cache);
//   (b) changing the later tokens of a sequence leaves the earlier logits unchanged;
//   (c) a sequence's logits are the same alone and batched next to another sequence.
// Tolerance for all three: |a - b| <= 1e-4 + 1e-4 |b| (fp32; the three paths group the same
// sums differently, e.g. one row against a block of rows in the GEMMs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine_util.h"
#include "infer/inference_model.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "tensor/error.h"
#include "tensor/threads.h"

namespace moe {
namespace {

constexpr int64_t kSeq = 48, kVocab = 64;

struct RoutingSetup {
  std::string name;
  std::function<void(MoeConfig&)> apply;
};

MoeConfig base_moe() {
  MoeConfig m;
  m.hidden_size = 32;
  m.moe_intermediate_size = 24;
  m.num_experts = 8;
  m.top_k = 2;
  m.aux_loss_coeff = 0.01f;
  m.z_loss_coeff = 0.001f;
  return m;
}

// Expert choice, balanced by construction: no balancing loss, capacity factor 1.
void make_expert_choice(MoeConfig& m) {
  m.router_type = RouterType::ExpertChoice;
  m.aux_loss_type = AuxLossType::None;
  m.aux_loss_coeff = 0;
  m.capacity_factor = 1.0;
}

std::vector<RoutingSetup> setups() {
  std::vector<RoutingSetup> out;
  const std::pair<std::string, RouterType> routers[] = {
      {"softmax_topk", RouterType::SoftmaxTopK},
      {"topk_softmax", RouterType::TopKSoftmax},
      {"noisy_topk", RouterType::NoisyTopK},
      {"sigmoid_bias", RouterType::SigmoidBias},
  };
  for (const auto& [router_name, type] : routers)
    for (const int64_t prefix : {int64_t{0}, int64_t{5}}) {  // 0: token level
      const RouterType t = type;
      const std::string level = prefix ? "_sequence" : "";
      auto base = [t, prefix](MoeConfig& m) {
        m.router_type = t;
        if (t == RouterType::SigmoidBias) m.aux_loss_coeff = 0;
        if (prefix) {
          m.routing_level = RoutingLevel::Sequence;
          m.route_prefix = prefix;
        }
      };
      out.push_back({router_name + level + "_dropless", base});
      for (const auto& [policy_name, policy] :
           {std::pair{"probs", DropPolicy::Probs}, std::pair{"position", DropPolicy::Position}}) {
        const DropPolicy p = policy;
        out.push_back({router_name + level + "_capacity_" + policy_name, [base, p](MoeConfig& m) {
                         base(m);
                         m.capacity_factor = 1.0;
                         m.drop_policy = p;
                       }});
      }
    }
  out.push_back({"topk_softmax_jitter", [](MoeConfig& m) { m.jitter_eps = 0.1f; }});
  out.push_back({"expert_choice", make_expert_choice});
  return out;
}

ModelConfig model_config(const RoutingSetup& setup) {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = kSeq;
  c.moe_layer_freq = 1;
  MoeConfig m = base_moe();
  setup.apply(m);
  c.moe = m;
  c.validate();
  return c;
}

std::vector<float> eval_logits(Transformer& model, const std::vector<int32_t>& tokens,
                               int64_t batch) {
  const std::vector<int32_t> targets(tokens.size(), -1);
  ModelStepOptions eval;
  eval.training = false;
  eval.compute_grad = false;
  model.forward(tokens, targets, batch, kSeq, eval);
  return {model.logits().begin(), model.logits().end()};
}

// Largest violation of |a - b| <= 1e-4 + 1e-4 |b| over the first `positions` rows (0 = none).
double worst_excess(const std::vector<float>& a, const std::vector<float>& b, int64_t positions) {
  double worst = 0;
  for (int64_t i = 0; i < positions * kVocab; ++i)
    worst = std::max(worst, std::abs(double(a[i]) - b[i]) - (1e-4 + 1e-4 * std::abs(b[i])));
  return worst;
}

class Causality : public ::testing::TestWithParam<int> {};

TEST_P(Causality, EvalOutputDependsOnlyOnThePastOfItsOwnSequence) {
  set_threads(GetParam());
  for (const RoutingSetup& setup : setups()) {
    SCOPED_TRACE(setup.name + " at " + std::to_string(GetParam()) + " threads");
    const ModelConfig config = model_config(setup);
    ParamStore store;
    Transformer model(config, store, /*seed=*/3);
    store.allocate();
    Rng rng(11);
    rng.fill_normal(store.values().span(), 0.0f, 0.3f);

    // Training forwards first: routers with state learned in training (the sigmoid bias,
    // expert choice's thresholds) must be evaluated with that state.
    std::vector<int32_t> batch(4 * kSeq), targets(4 * kSeq);
    for (int step = 0; step < 3; ++step) {
      for (auto& t : batch) t = static_cast<int32_t>(rng.next_u64() % kVocab);
      for (auto& t : targets) t = static_cast<int32_t>(rng.next_u64() % kVocab);
      ModelStepOptions train;
      train.compute_grad = false;
      model.forward(batch, targets, 4, kSeq, train);
      model.update_expert_bias();
    }

    std::vector<int32_t> seq(kSeq), other(kSeq);
    for (auto& t : seq) t = static_cast<int32_t>(rng.next_u64() % kVocab);
    for (auto& t : other) t = static_cast<int32_t>(rng.next_u64() % kVocab);
    const std::vector<float> full = eval_logits(model, seq, 1);
    for (int64_t l = 0; l < model.num_layers(); ++l) {
      const MoeLayer& moe = *model.moe_layer(l);
      const RoutingStats& stats = moe.stats();
      // Every token reaches an expert in eval: no drops, and expert choice's thresholds
      // route about k experts per token (a loose band: they were learned on 3 batches).
      EXPECT_EQ(stats.dropped, 0);
      const double per_token = double(stats.assignments) / kSeq;
      EXPECT_GT(per_token, 0.5 * config.moe->top_k) << "layer " << l;
      EXPECT_LT(per_token, 2.0 * config.moe->top_k) << "layer " << l;
      if (config.moe->routing_level == RoutingLevel::Sequence) {
        // From position P-1 on, the sequence keeps one route: same experts, same gates.
        const RoutingPlan& plan = moe.plan();
        const int64_t k = plan.top_k, fixed = config.moe->route_prefix - 1;
        for (int64_t t = fixed + 1; t < kSeq; ++t)
          for (int64_t j = 0; j < k; ++j) {
            EXPECT_EQ(plan.expert[t * k + j], plan.expert[fixed * k + j]) << "position " << t;
            EXPECT_EQ(plan.gate[t * k + j], plan.gate[fixed * k + j]) << "position " << t;
          }
      }
    }

    // (a) the inference engine over the same weights equals the forward: token by token,
    // and a prefill of the first part then a prefill of the rest (a second turn onto a cache
    // that already holds positions).
    const OwnedWeights weights = test::engine_weights(model, store);
    InferenceModel engine(config, HfArch::Mixtral, weights);
    EXPECT_LE(worst_excess(test::engine_logits(engine, seq), full, kSeq), 0.0)
        << "decode differs from the forward";
    {
      KvCache cache = engine.make_cache(kSeq);
      std::vector<float> first(kVocab), last(kVocab);
      const std::span<const int32_t> all(seq);
      engine.forward(all.subspan(0, 7), cache, first);
      engine.forward(all.subspan(7), cache, last);
      std::vector<float> want(full.begin() + 6 * kVocab, full.begin() + 7 * kVocab);
      EXPECT_LE(worst_excess(first, want, 1), 0.0) << "prefill differs from the forward";
      want.assign(full.end() - kVocab, full.end());
      EXPECT_LE(worst_excess(last, want, 1), 0.0) << "a second prefill differs from the forward";
    }

    // (b) the second half changed: the first half's logits stay.
    std::vector<int32_t> changed = seq;
    for (int64_t p = kSeq / 2; p < kSeq; ++p) changed[p] = (seq[p] + 1 + p) % kVocab;
    EXPECT_LE(worst_excess(eval_logits(model, changed, 1), full, kSeq / 2), 0.0)
        << "later tokens changed earlier logits";

    // (c) batched next to another sequence (first and second in the batch).
    std::vector<int32_t> pair = seq;
    pair.insert(pair.end(), other.begin(), other.end());
    EXPECT_LE(worst_excess(eval_logits(model, pair, 2), full, kSeq), 0.0)
        << "another sequence in the batch changed the logits";
    std::vector<int32_t> swapped = other;
    swapped.insert(swapped.end(), seq.begin(), seq.end());
    const std::vector<float> second = eval_logits(model, swapped, 2);
    EXPECT_LE(
        worst_excess(std::vector<float>(second.begin() + kSeq * kVocab, second.end()), full, kSeq),
        0.0)
        << "another sequence in the batch changed the logits (second place)";
  }
  set_threads(0);
}

INSTANTIATE_TEST_SUITE_P(Threads, Causality, ::testing::Values(1, 2));

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// Expert choice's thresholds: the first training forward sets theta_e to the score of the C-th
// token expert e took; each later one is theta_e <- 0.99 theta_e + 0.01 s_e (docs/FORMULAS.md;
// the constants written here, not read from the code under test), over six forwards. The
// scores are recomputed here with plain loops (softmax over experts of x W_r^T), in double.
TEST(ExpertChoiceThresholds, FollowTheMovingAverageOfEachExpertsLastPick) {
  MoeConfig m = base_moe();
  make_expert_choice(m);
  ParamStore store;
  MoeLayer layer(m, store, "moe");
  store.allocate();
  Rng rng(5);
  layer.init_parameters(rng, 0.3f);
  const int64_t T = 40, D = m.hidden_size, E = m.num_experts, C = m.capacity(T, true);
  Tensor x({T, D}), y({T, D});
  std::vector<double> expected(E);
  for (int step = 0; step < 6; ++step) {
    rng.fill_normal(x.span(), 0.0f, 1.0f);
    layer.forward(x.span(), T, y.span(), {true, 0, {}});
    const auto w = store.value(layer.router().weight());
    for (int64_t e = 0; e < E; ++e) {
      std::vector<double> column(T);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> logits(E);
        double max_logit = -1e30, sum = 0;
        for (int64_t i = 0; i < E; ++i) {
          for (int64_t d = 0; d < D; ++d) logits[i] += double(x[t * D + d]) * w[i * D + d];
          max_logit = std::max(max_logit, logits[i]);
        }
        for (int64_t i = 0; i < E; ++i) sum += std::exp(logits[i] - max_logit);
        column[t] = std::exp(logits[e] - max_logit) / sum;
      }
      std::sort(column.begin(), column.end(), std::greater<>());
      const double last = column[C - 1];
      expected[e] = step == 0 ? last : 0.99 * expected[e] + 0.01 * last;
      EXPECT_NEAR(layer.router().expert_threshold()[e], expected[e], 1e-6)
          << "step " << step << " expert " << e;
    }
  }
  // Evaluation forwards leave the thresholds alone.
  const std::vector<float> before(layer.router().expert_threshold().begin(),
                                  layer.router().expert_threshold().end());
  layer.forward(x.span(), T, y.span(), {false, 0, {}});
  EXPECT_TRUE(std::equal(before.begin(), before.end(), layer.router().expert_threshold().begin()));
}

TEST(ExpertChoiceThresholds, AModelWithoutThemRefusesToEvaluate) {
  MoeConfig m = base_moe();
  make_expert_choice(m);
  ParamStore store;
  MoeLayer layer(m, store, "moe");
  store.allocate();
  Tensor x({4, m.hidden_size}), y({4, m.hidden_size});
  x.fill(0.5f);
  EXPECT_THROW(layer.forward(x.span(), 4, y.span(), {false, 0, {}}), Error);
}

// A run written before thresholds existed: loading it for evaluation names the tensor and how
// to get it; loading it to resume leaves the thresholds to be estimated and says how many.
TEST(ExpertChoiceThresholds, AnOlderCheckpointWithoutThemIsRefusedOrReestimated) {
  RoutingSetup expert_choice = setups().back();
  ASSERT_EQ(expert_choice.name, "expert_choice");
  const ModelConfig config = model_config(expert_choice);
  ParamStore store;
  Transformer model(config, store);
  store.allocate();
  Rng rng(2);
  rng.fill_normal(store.values().span(), 0.0f, 0.3f);
  std::vector<int32_t> tokens(kSeq, 1), targets(kSeq, 2);
  ModelStepOptions train;
  train.compute_grad = false;
  model.forward(tokens, targets, 1, kSeq, train);
  SafetensorsFile old_run;
  old_run.tensors = model_tensors(model, store);
  std::erase_if(old_run.tensors,
                [](const auto& entry) { return entry.first.ends_with(".gate.expert_threshold"); });
  ParamStore fresh_store;
  Transformer fresh(config, fresh_store);
  fresh_store.allocate();
  try {
    load_model_tensors(fresh, fresh_store, old_run, "old/model.safetensors");
    FAIL() << "an expert-choice checkpoint without thresholds loaded for evaluation";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gate.expert_threshold"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  EXPECT_EQ(load_model_tensors(fresh, fresh_store, old_run, "old/model.safetensors",
                               /*allow_missing_thresholds=*/true),
            config.num_moe_layers());
  EXPECT_FALSE(fresh.moe_layer(0)->router().thresholds_estimated());
  fresh.forward(tokens, targets, 1, kSeq, train);  // a training step estimates them again
  EXPECT_TRUE(fresh.moe_layer(0)->router().thresholds_estimated());
}

}  // namespace
}  // namespace moe
