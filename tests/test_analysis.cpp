// `moe eval`'s figures on hand-computed cases (analysis/routing_metrics.h), the drop count
// against the dispatcher's own, eval-mode routing determinism, and saturation over identical
// kept checkpoints of a tiny trained run.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "analysis/eval.h"
#include "analysis/routing_metrics.h"
#include "model/config.h"
#include "model/transformer.h"
#include "moe/load_metrics.h"
#include "moe/moe_layer.h"
#include "run/checkpoint.h"
#include "run/training_record.h"
#include "tensor/params.h"
#include "tensor/rng.h"
#include "test_util.h"
#include "train/trainer.h"

namespace moe {
namespace {

using test::error_of;
using test::temp_dir;

constexpr double kTol = 1e-12;  // exact arithmetic up to a few roundings

TEST(LoadFigures, UniformLoadHasGiniZeroAndEntropyOne) {
  const std::vector<int64_t> counts(8, 100);
  const LoadMetrics m = load_metrics(counts);
  EXPECT_NEAR(m.gini, 0.0, kTol);
  EXPECT_NEAR(m.normalized_entropy, 1.0, kTol);
  EXPECT_NEAR(m.cv, 0.0, kTol);
  EXPECT_NEAR(m.max_over_mean, 1.0, kTol);
  EXPECT_TRUE(m.overloaded.empty() && m.starved.empty());
}

TEST(LoadFigures, AllOnOneExpertHasGiniEMinusOneOverEAndEntropyZero) {
  std::vector<int64_t> counts(8, 0);
  counts[3] = 800;
  const LoadMetrics m = load_metrics(counts);
  EXPECT_NEAR(m.gini, 7.0 / 8.0, kTol);
  EXPECT_NEAR(m.normalized_entropy, 0.0, kTol);
  EXPECT_NEAR(m.max_over_mean, 8.0, kTol);
  EXPECT_EQ(m.overloaded, std::vector<int64_t>{3});
  EXPECT_EQ(m.starved.size(), 7u);
}

TEST(Nmi, KnownTables) {
  // Diagonal: the domain determines the expert.
  EXPECT_NEAR(normalized_mutual_information(std::vector<int64_t>{10, 0, 0, 10}, 2, 2), 1.0, kTol);
  // Independent: every row has the same distribution.
  EXPECT_NEAR(normalized_mutual_information(std::vector<int64_t>{5, 5, 10, 10}, 2, 2), 0.0, kTol);
  // [[3,1],[1,3]]: H(R) = H(C) = ln 2, I = 3/4 ln(3/2) + 1/4 ln(1/2), so
  // NMI = 1 - H2(1/4) in bits = 1 - (2 - 3/4 log2 3) = 3/4 log2 3 - 1.
  EXPECT_NEAR(normalized_mutual_information(std::vector<int64_t>{3, 1, 1, 3}, 2, 2),
              0.75 * std::log2(3.0) - 1.0, kTol);
  // A 2 x 3 table, checked with a short Python computation of the same definition.
  EXPECT_NEAR(normalized_mutual_information(std::vector<int64_t>{6, 2, 0, 0, 3, 5}, 2, 3),
              0.5401013853760377, 1e-12);
  // One domain only: nothing to explain.
  EXPECT_EQ(normalized_mutual_information(std::vector<int64_t>{4, 6}, 1, 2), 0.0);
  EXPECT_NE(error_of([] {
              normalized_mutual_information(std::vector<int64_t>{1, 2, 3}, 2, 2);
            }),
            "");
}

TEST(Consecutive, KnownSequence) {
  const std::vector<int32_t> top1 = {0, 0, 1, 1, 1, 2};
  // One segment: 5 pairs, 3 repeats (0-0, 1-1, 1-1); f = (2, 3, 1) / 6.
  const RepeatRate one = consecutive_repeats(top1, std::vector<int64_t>(6, 7), 3);
  EXPECT_EQ(one.pairs, 5);
  EXPECT_NEAR(one.rate, 3.0 / 5.0, kTol);
  EXPECT_NEAR(one.chance, (4.0 + 9.0 + 1.0) / 36.0, kTol);
  // A document boundary between positions 2 and 3 removes the pair (1, 1) there: 4 pairs,
  // repeats 0-0 and 1-1.
  const RepeatRate two = consecutive_repeats(top1, std::vector<int64_t>{0, 0, 0, 1, 1, 1}, 3);
  EXPECT_EQ(two.pairs, 4);
  EXPECT_NEAR(two.rate, 2.0 / 4.0, kTol);
  // A position routed nowhere never repeats and is outside f.
  const RepeatRate gap =
      consecutive_repeats(std::vector<int32_t>{1, -1, -1, 1}, std::vector<int64_t>(4, 0), 2);
  EXPECT_EQ(gap.rate, 0.0);
  EXPECT_NEAR(gap.chance, 1.0, kTol);
}

TEST(GateHistogram, BinEdges) {
  const auto h = gate_histogram(std::vector<float>{0.0f, 0.05f, 0.1f, 0.55f, 0.95f, 1.0f, 2.5f});
  const std::array<int64_t, 10> expected = {2, 1, 0, 0, 0, 1, 0, 0, 0, 3};
  EXPECT_EQ(h, expected);
}

TEST(Saturation, IdenticalRoutesChangeNothing) {
  const std::vector<int32_t> a = {3, 1, 4, 1, 5};
  EXPECT_EQ(changed_share(a, a), 0.0);
  EXPECT_NEAR(changed_share(a, std::vector<int32_t>{3, 1, 4, 1, 6}), 0.2, kTol);
}

TEST(TokenLift, HandComputed) {
  // N = 25, the expert's total 15: token 0 (5/15) / (10/25) = 5/6, token 2 (10/15) / (10/25) = 5/3.
  const std::vector<int64_t> at_expert = {5, 0, 10}, totals = {10, 5, 10};
  const auto all = top_tokens_by_lift(at_expert, totals, 1, 10);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].token, 2);
  EXPECT_NEAR(all[0].lift, 5.0 / 3.0, kTol);
  EXPECT_EQ(all[0].count, 10);
  EXPECT_NEAR(all[1].lift, 5.0 / 6.0, kTol);
  const auto frequent = top_tokens_by_lift(at_expert, totals, 6, 10);
  ASSERT_EQ(frequent.size(), 1u);
  EXPECT_EQ(frequent[0].token, 2);
}

TEST(TokenClasses, Pieces) {
  EXPECT_EQ(classify_piece("\u2581The"), TokenClass::Letters);
  EXPECT_EQ(classify_piece("\u00e9"), TokenClass::Letters);
  EXPECT_EQ(classify_piece("\u2581123"), TokenClass::Digits);
  EXPECT_EQ(classify_piece("{"), TokenClass::CodeSymbols);
  EXPECT_EQ(classify_piece("->"), TokenClass::CodeSymbols);
  EXPECT_EQ(classify_piece("\u2581("), TokenClass::Punctuation);
  EXPECT_EQ(classify_piece("\u2581\u2581\u2581"), TokenClass::Whitespace);
  EXPECT_EQ(classify_piece("\u21B5"), TokenClass::Whitespace);
  EXPECT_EQ(classify_piece("</s>"), TokenClass::Whitespace);
  EXPECT_EQ(classify_piece("<0x2C>"), TokenClass::Punctuation);
  EXPECT_EQ(classify_piece("<0xC3>"), TokenClass::Letters);
}

TEST(Compare, TokensToReach) {
  const std::vector<std::pair<int64_t, double>> curve = {{100, 5.0}, {200, 4.0}, {300, 3.0}};
  EXPECT_NEAR(*tokens_to_reach(curve, 3.5), 250.0, kTol);
  EXPECT_NEAR(*tokens_to_reach(curve, 4.0), 200.0, kTol);
  EXPECT_NEAR(*tokens_to_reach(curve, 6.0), 100.0, kTol);  // reached at the first point
  EXPECT_FALSE(tokens_to_reach(curve, 2.0).has_value());
}

MoeConfig drop_config(DropPolicy policy, int64_t min_capacity) {
  MoeConfig c;
  c.hidden_size = 16;
  c.moe_intermediate_size = 8;
  c.num_experts = 4;
  c.top_k = 2;
  c.capacity_factor = 1.0;
  c.min_capacity = min_capacity;
  c.drop_policy = policy;
  return c;
}

// The drop count eval reports is the one the dispatcher makes in a training forward.
TEST(DropRate, EqualsTheDispatchersCount) {
  for (DropPolicy policy : {DropPolicy::Probs, DropPolicy::Position})
    for (int64_t min_capacity : {0, 40})
      for (int64_t T : {37, 64}) {
        const MoeConfig c = drop_config(policy, min_capacity);
        ParamStore store;
        MoeLayer layer(c, store, "moe", 5);
        store.allocate();
        Rng rng(11);
        layer.init_parameters(rng, 0.5f);
        std::vector<float> x(T * c.hidden_size), y(x.size());
        rng.fill_normal(x, 0.0f, 1.0f);
        // Skew the inputs towards one direction so that some expert overflows.
        for (int64_t t = 0; t < T; ++t) x[t * c.hidden_size] += 3.0f;
        const RoutingStats& s = layer.forward(x, T, y);  // training mode (the default)
        const int64_t eval_count =
            assignments_over_capacity(s.tokens_per_expert, c.capacity(T, /*training=*/true));
        EXPECT_EQ(eval_count, s.dropped) << "T " << T << " min_capacity " << min_capacity;
        if (min_capacity == 0) {
          EXPECT_GT(s.dropped, 0) << "the case drops nothing: it checks nothing";
        }
      }
}

ModelConfig noisy_model() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 16;
  c.moe_layer_freq = 1;
  MoeConfig m;
  m.hidden_size = 32;
  m.moe_intermediate_size = 16;
  m.num_experts = 4;
  m.top_k = 2;
  m.router_type = RouterType::NoisyTopK;
  m.jitter_eps = 0.1f;
  c.moe = m;
  c.validate();
  return c;
}

// Eval mode routes the same input the same way every time; training mode's noise does not.
TEST(NoiseAgreement, EvalModeIsDeterministicTrainingNoiseIsNot) {
  const ModelConfig config = noisy_model();
  ParamStore store;
  Transformer model(config, store, 3);
  store.allocate();
  Rng init(4);
  model.init_parameters(init);
  const int64_t B = 4, S = 16;
  std::vector<int32_t> tokens(B * S), targets(B * S, -1);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7 % 64);
  auto routes = [&](bool training) {
    ModelStepOptions o;
    o.training = training;
    o.compute_grad = false;
    model.forward(tokens, targets, B, S, o);
    std::vector<std::vector<int32_t>> out;
    for (int64_t l = 0; l < model.num_layers(); ++l)
      out.push_back(model.moe_layer(l)->plan().expert);
    return out;
  };
  EXPECT_EQ(routes(false), routes(false));
  EXPECT_NE(routes(true), routes(true)) << "training noise changed no route";
}

// A tiny run trained with kept checkpoints over a two-domain corpus folder.
std::string train_tiny_run(const std::string& dir) {
  for (const char* domain : {"letters", "numbers"}) {
    std::filesystem::create_directories(dir + "/corpus/" + domain);
    for (int d = 0; d < 4; ++d) {
      std::ofstream f(dir + "/corpus/" + domain + "/doc" + std::to_string(d) + ".txt");
      for (int line = 0; line < 30; ++line)
        if (domain[0] == 'l')
          f << "the quick brown fox jumps over the lazy dog while " << char('a' + line % 26)
            << " waits\n";
        else
          f << line * 37 + d << " + " << line * 11 << " = " << line * 48 + d << ";\n";
    }
  }
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.config = MOE_SOURCE_DIR "/tests/cases/tiny_model.json";
  o.corpus = dir + "/corpus";
  o.vocab_size = 340;
  o.steps = 3;
  o.batch_size = 2;
  o.seq_len = 16;
  o.warmup = 1;
  o.eval_every = o.save_every = o.monitor_every = o.log_every = 1;
  o.eval_batches = 1;
  o.quiet = true;
  o.keep_checkpoints = true;
  train(o);
  return o.out_dir;
}

TEST(Eval, TinyRunFiguresAndSaturationOfIdenticalCheckpoints) {
  const std::string dir = temp_dir("run");
  const std::string run = train_tiny_run(dir);
  const auto kept = kept_checkpoints(run);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_EQ(kept.front().first, 1);
  EXPECT_EQ(kept.back().first, 3);

  // A half-written copy (killed before its rename) is not listed; a whole copy beyond the run's
  // step (a run resumed with fewer steps) is listed but left out of the saturation.
  namespace fs = std::filesystem;
  fs::copy(kept.back().second, run + "/checkpoints/step-000007.tmp");
  fs::copy(kept.back().second, run + "/checkpoints/step-000009");
  EXPECT_EQ(kept_checkpoints(run).size(), 4u);
  EXPECT_EQ(kept_checkpoints(run).back().first, 9);

  EvalOptions o;
  o.model = run;
  EvalResult r = evaluate_run(o);
  ASSERT_EQ(r.layers.size(), 1u);  // tiny_model.json: MoE every other block of 2
  const LayerEval& l = r.layers[0];
  EXPECT_EQ(l.layer, 1);
  int64_t assignments = 0;
  for (int64_t c : l.counts) assignments += c;
  EXPECT_EQ(assignments, r.tokens * 2);  // dropless eval, k = 2
  ASSERT_TRUE(l.domain_matrix.has_value());
  EXPECT_EQ(l.domain_matrix->domains, (std::vector<std::string>{"letters", "numbers"}));
  for (const auto& row : l.domain_matrix->top1) {
    double sum = 0;
    for (double s : row) sum += s;
    EXPECT_NEAR(sum, 1.0, 1e-9);
  }
  ASSERT_TRUE(l.noise_agreement.has_value());  // tiny_model.json: noisy top-k with jitter
  EXPECT_EQ(r.passages.size(), 2u);
  ASSERT_TRUE(r.saturation.has_value());
  EXPECT_EQ(r.saturation->steps, (std::vector<int64_t>{1, 2, 3}));

  // Identical checkpoints: nothing changes between them and all agree with the final one.
  for (const auto& [step, path] : kept)
    if (step != kept.back().first)
      fs::copy_file(kept.back().second + "/model.safetensors", path + "/model.safetensors",
                    fs::copy_options::overwrite_existing);
  r = evaluate_run(o);
  ASSERT_TRUE(r.saturation.has_value());
  for (const SaturationLayer& s : r.saturation->layers) {
    for (double c : s.changed_from_previous) EXPECT_EQ(c, 0.0);
    for (double same : s.same_as_final) EXPECT_EQ(same, 1.0);
  }

  // Bad input: an empty text, a text that is not UTF-8, a folder without a checkpoint.
  std::ofstream(dir + "/blank.txt") << "\n \n";
  o.text = dir + "/blank.txt";
  EXPECT_NE(error_of([&] { evaluate_run(o); }).find("is empty"), std::string::npos);
  std::ofstream(dir + "/latin1.txt") << "caf\xe9 au lait\n";
  o.text = dir + "/latin1.txt";
  EXPECT_NE(error_of([&] { evaluate_run(o); }).find("UTF-8"), std::string::npos);
  fs::create_directories(dir + "/nothing");
  o.text.clear();
  o.model = dir + "/nothing";
  EXPECT_NE(error_of([&] { evaluate_run(o); }).find("is not a run folder (no config.json)"),
            std::string::npos);
}

}  // namespace
}  // namespace moe
