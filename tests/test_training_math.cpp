// The training math around the MoE layers, through the whole Transformer as the trainer
// drives it: the aux-loss-free bias update (DeepSeek-V3) step by step, and gradient
// accumulation with the router losses on.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/transformer.h"
#include "moe/load_metrics.h"
#include "nn/optimizer.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "train/trainer.h"

namespace moe {
namespace {

ModelConfig small_moe_model(const nlohmann::json& moe) {
  nlohmann::json m = {{"vocab_size", 37},
                      {"hidden_size", 16},
                      {"intermediate_size", 24},
                      {"num_hidden_layers", 3},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"max_position_embeddings", 16},
                      {"first_k_dense_replace", 1},
                      {"moe", moe}};
  m["moe"]["moe_intermediate_size"] = 8;
  return model_config_from_json(m);
}

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next_u64() % vocab);
  return ids;
}

std::vector<int64_t> sum(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
  return out;
}

// Aux-loss-free balancing, as the trainer runs it: every step, two micro-batches forward and
// backward, an AdamW step, then Transformer::update_expert_bias, which must move each MoE
// layer's bias by b_i += gamma * sign(mean load - load_i) over the loads of that step's
// training forwards (an evaluation forward in between does not count). The bias starts
// skewed towards expert 0; the loads must end far closer to balance than they start (by the
// coefficient of variation of the loads, over the last steps together: one step's loads
// scatter by sampling and by the bias's own +-gamma oscillation).
TEST(ExpertBiasUpdate, FollowsTheFormulaEachStepAndBalancesTheLoads) {
  constexpr float kGamma = 0.05f;
  constexpr int64_t kSteps = 30, kLastSteps = 15, B = 4, S = 12, E = 4;
  const ModelConfig cfg = small_moe_model({{"num_experts", E},
                                           {"top_k", 2},
                                           {"router_type", "sigmoid_bias"},
                                           {"bias_update_speed", kGamma},
                                           {"aux_loss_type", "none"}});
  ParamStore store;
  Transformer model(cfg, store, 3);
  store.allocate();
  Rng rng(17);
  model.init_parameters(rng);
  AdamW optimizer(store, AdamWOptions{});
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < model.num_layers(); ++l)
    if (MoeLayer* m = model.moe_layer(l)) {
      moe_layers.push_back(l);
      // Router weights large enough that the scores differ from token to token.
      rng.fill_normal(store.value(m->router().weight()), 0.0f, 0.5f);
      auto bias = m->router().expert_bias();
      std::fill(bias.begin(), bias.end(), 0.0f);
      bias[0] = 1.0f;  // sigmoid scores lie in (0, 1): expert 0 wins every token
    }
  ASSERT_EQ(moe_layers.size(), 2u);

  std::vector<double> first_cv(moe_layers.size());
  std::vector<std::vector<int64_t>> late_load(moe_layers.size(), std::vector<int64_t>(E, 0));
  for (int64_t step = 0; step < kSteps; ++step) {
    std::vector<std::vector<int64_t>> load(moe_layers.size(), std::vector<int64_t>(E, 0));
    store.zero_grads();
    ModelStepOptions micro;
    micro.grad_scale = 0.5f;
    for (int m = 0; m < 2; ++m) {
      const auto tokens = random_ids(rng, B * S, cfg.vocab_size);
      const auto targets = random_ids(rng, B * S, cfg.vocab_size);
      model.forward(tokens, targets, B, S, micro);
      model.backward();
      for (size_t i = 0; i < moe_layers.size(); ++i)
        load[i] = sum(load[i], model.moe_layer(moe_layers[i])->stats().tokens_per_expert);
    }
    ModelStepOptions eval;  // evaluation between steps: its loads must not count
    eval.training = false;
    eval.compute_grad = false;
    const auto eval_tokens = random_ids(rng, B * S, cfg.vocab_size);
    model.forward(eval_tokens, eval_tokens, B, S, eval);
    optimizer.step(1e-3f);

    std::vector<std::vector<float>> before;
    for (int64_t l : moe_layers) {
      auto b = model.moe_layer(l)->router().expert_bias();
      before.emplace_back(b.begin(), b.end());
    }
    model.update_expert_bias();
    for (size_t i = 0; i < moe_layers.size(); ++i) {
      double mean = 0;
      for (int64_t c : load[i]) mean += double(c) / E;
      const auto after = model.moe_layer(moe_layers[i])->router().expert_bias();
      for (int64_t e = 0; e < E; ++e) {
        const double err = mean - double(load[i][e]);
        const float expected = before[i][e] + kGamma * static_cast<float>((err > 0) - (err < 0));
        EXPECT_FLOAT_EQ(after[e], expected) << "step " << step << " layer " << moe_layers[i]
                                            << " expert " << e << " load " << load[i][e];
      }
      if (step == 0) first_cv[i] = load_metrics(load[i]).cv;
      if (step >= kSteps - kLastSteps) late_load[i] = sum(late_load[i], load[i]);
    }
  }
  for (size_t i = 0; i < moe_layers.size(); ++i) {
    const double late_cv = load_metrics(late_load[i]).cv;
    EXPECT_GT(first_cv[i], 0.5) << "layer " << moe_layers[i] << " did not start imbalanced";
    EXPECT_LT(late_cv, 0.25 * first_cv[i])
        << "layer " << moe_layers[i] << ": load CV " << first_cv[i] << " -> " << late_cv;
  }
}

// Copies of every gradient after one full batch, or after two half batches weighted 1/2.
std::vector<float> gradients(Transformer& model, ParamStore& store, std::span<const int32_t> tokens,
                             std::span<const int32_t> targets, int64_t batch, int64_t seq,
                             int64_t micro_batches) {
  store.zero_grads();
  ModelStepOptions opt;
  opt.grad_scale = 1.0f / static_cast<float>(micro_batches);
  const int64_t b = batch / micro_batches;
  for (int64_t m = 0; m < micro_batches; ++m) {
    const auto first = static_cast<size_t>(m * b * seq), count = static_cast<size_t>(b * seq);
    model.forward(tokens.subspan(first, count), targets.subspan(first, count), b, seq, opt);
    model.backward();
  }
  return {store.grads().span().begin(), store.grads().span().end()};
}

// Batch 2B with accumulation 1 against batch B with accumulation 2: the same gradient for
// every parameter, routers included, with the router losses weighted about 1 so their
// gradients are a large part of the routers'. The sequence-level balancing loss and the
// z-loss are means over sequences and tokens, so any two halves decompose. The batch-level
// (Switch) loss multiplies batch means, so its halves decompose only when they hold the same
// tokens: that case repeats the first half.
void expect_accumulation_matches_full_batch(const nlohmann::json& moe, bool repeat_half) {
  const ModelConfig cfg = small_moe_model(moe);
  ParamStore store;
  Transformer model(cfg, store, 5);
  store.allocate();
  Rng rng(23);
  rng.fill_normal(store.values().span(), 0.0f, 0.3f);
  constexpr int64_t B = 4, S = 8;
  auto tokens = random_ids(rng, B * S, cfg.vocab_size);
  auto targets = random_ids(rng, B * S, cfg.vocab_size);
  if (repeat_half) {
    std::copy(tokens.begin(), tokens.begin() + B / 2 * S, tokens.begin() + B / 2 * S);
    std::copy(targets.begin(), targets.begin() + B / 2 * S, targets.begin() + B / 2 * S);
  }
  const auto full = gradients(model, store, tokens, targets, B, S, 1);
  const auto accumulated = gradients(model, store, tokens, targets, B, S, 2);

  for (const auto& e : store.entries()) {
    int64_t bad = 0;
    double norm = 0;
    for (int64_t i = e.ref.offset; i < e.ref.offset + e.ref.numel; ++i) {
      norm += double(full[i]) * full[i];
      bad += !(std::abs(accumulated[i] - full[i]) <= 1e-6f + 1e-4f * std::abs(full[i]));
    }
    EXPECT_EQ(bad, 0) << e.name << ": " << bad << " of " << e.ref.numel << " differ";
    EXPECT_GT(norm, 0.0) << e.name << " has no gradient: the test proves nothing for it";
  }
}

TEST(GradientAccumulation, SequenceAuxAndZLossGradientsFollowTheMicroBatchWeight) {
  expect_accumulation_matches_full_batch({{"num_experts", 4},
                                          {"top_k", 2},
                                          {"router_type", "softmax_topk"},
                                          {"aux_loss_type", "seq"},
                                          {"aux_loss_coeff", 1.0},
                                          {"z_loss_coeff", 1.0},
                                          {"n_shared_experts", 1},
                                          {"shared_expert_intermediate_size", 8},
                                          {"shared_expert_gate", true}},
                                         false);
}

TEST(GradientAccumulation, SigmoidSequenceAuxAndZLossGradientsFollowTheMicroBatchWeight) {
  expect_accumulation_matches_full_batch({{"num_experts", 6},
                                          {"top_k", 2},
                                          {"router_type", "sigmoid_bias"},
                                          {"routed_scaling_factor", 2.5},
                                          {"aux_loss_type", "seq"},
                                          {"aux_loss_coeff", 1.0},
                                          {"z_loss_coeff", 1.0}},
                                         false);
}

TEST(GradientAccumulation, BatchAuxAndZLossGradientsFollowTheMicroBatchWeight) {
  expect_accumulation_matches_full_batch({{"num_experts", 4},
                                          {"top_k", 2},
                                          {"router_type", "topk_softmax"},
                                          {"aux_loss_type", "switch"},
                                          {"aux_loss_coeff", 1.0},
                                          {"z_loss_coeff", 1.0}},
                                         true);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// The training loop itself applies the bias update after each optimizer step: a short run of a
// sigmoid-routed model ends with a non-zero selection bias in its checkpoint (the bias starts
// at zero and moves by +-gamma per step wherever a load differs from the mean).
TEST(ExpertBiasUpdate, TheTrainingLoopAppliesIt) {
  const std::string dir = test::temp_dir("bias_run");
  nlohmann::json config =
      nlohmann::json::parse(std::ifstream(MOE_SOURCE_DIR "/tests/cases/tiny_model.json"));
  config["moe"] = {
      {"moe_intermediate_size", 32},   {"num_experts", 4},        {"top_k", 2},
      {"router_type", "sigmoid_bias"}, {"aux_loss_type", "none"}, {"bias_update_speed", 0.01}};
  std::ofstream(dir + "/sigmoid.json") << config.dump();
  std::ofstream corpus(dir + "/text.txt");
  for (int d = 0; d < 40; ++d)
    corpus << "document " << d << ": the quick brown fox " << d * 7 << " jumps over the lazy dog "
           << d % 5 << " times.\n\n";
  corpus.close();
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.config = dir + "/sigmoid.json";
  o.corpus = dir + "/text.txt";
  o.vocab_size = 320;
  o.steps = 3;
  o.batch_size = 2;
  o.seq_len = 16;
  o.warmup = 1;
  o.eval_every = o.save_every = o.monitor_every = o.log_every = 3;
  o.eval_batches = 1;
  o.quiet = true;
  train(o);
  const SafetensorsFile weights = read_safetensors(o.out_dir + "/model.safetensors");
  const Tensor& bias = weights.at("model.layers.1.block_sparse_moe.gate.e_score_correction_bias");
  double moved = 0;
  for (int64_t e = 0; e < bias.numel(); ++e) moved += std::abs(bias[e]);
  EXPECT_GT(moved, 0.0) << "three steps left the selection bias at zero";
}

}  // namespace
}  // namespace moe
