// Training pieces: optimizer, schedule, clipping, load metrics, sampling, tokenizer, corpus
// and token files, checkpoint consistency and error paths, and the KV-cache decode path.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine_util.h"
#include "infer/generate.h"
#include "model/checkpoint.h"
#include "model/param_count.h"
#include "model_cases.h"
#include "moe/load_metrics.h"
#include "nn/optimizer.h"
#include "run/checkpoint.h"
#include "tensor/error.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "text/data.h"
#include "text/tokenizer.h"

namespace moe {
namespace {
using test::error_of;
using test::temp_dir;
namespace fs = std::filesystem;

TEST(Schedule, WarmupThenCosineToMinimum) {
  EXPECT_FLOAT_EQ(learning_rate(0, 100, 10, 1.0f, 0.1f), 0.1f);
  EXPECT_FLOAT_EQ(learning_rate(9, 100, 10, 1.0f, 0.1f), 1.0f);
  EXPECT_FLOAT_EQ(learning_rate(10, 100, 10, 1.0f, 0.1f), 1.0f);
  EXPECT_NEAR(learning_rate(99, 100, 10, 1.0f, 0.1f), 0.1f, 1e-6);
  EXPECT_NEAR(learning_rate(54, 100, 10, 1.0f, 0.1f), 0.55f, 0.02f);  // cosine midpoint
}

TEST(AdamW, TwoStepsMatchTheFormulaAndSkipDecayOnNorms) {
  ParamStore store;
  const ParamRef w = store.add("layer.weight", {3});
  const ParamRef n = store.add("layer.norm.weight", {2});
  store.allocate();
  const float init[5] = {0.5f, -1.0f, 2.0f, 1.0f, 1.0f};
  std::copy(init, init + 3, store.value(w).data());
  std::copy(init + 3, init + 5, store.value(n).data());
  AdamWOptions o;
  o.weight_decay = 0.1f;
  AdamW opt(store, o);
  const double grads[2][5] = {{0.1, -0.2, 0.3, 0.4, -0.5}, {-0.3, 0.1, 0.2, 0.0, 0.5}};
  double p[5], m[5] = {}, v[5] = {};
  std::copy(init, init + 5, p);
  for (int t = 1; t <= 2; ++t) {
    for (int i = 0; i < 5; ++i) store.grads()[i < 3 ? i : 16 + i - 3] = float(grads[t - 1][i]);
    opt.step(0.01f);
    for (int i = 0; i < 5; ++i) {
      const double g = grads[t - 1][i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.95 * v[i] + 0.05 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.95, t));
      p[i] -= 0.01 * (mh / (std::sqrt(vh) + 1e-8) + (i < 3 ? 0.1 * p[i] : 0.0));
    }
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(store.value(w)[i], p[i], 1e-6) << i;
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(store.value(n)[i], p[3 + i], 1e-6) << i;
}

TEST(ClipGradNorm, ScalesToTheLimitOnlyWhenAbove) {
  ParamStore store;
  store.add("a", {2});
  store.allocate();
  store.grads()[0] = 3.0f;
  store.grads()[1] = 4.0f;
  EXPECT_DOUBLE_EQ(clip_grad_norm(store, 10.0), 5.0);
  EXPECT_FLOAT_EQ(store.grads()[0], 3.0f);
  EXPECT_DOUBLE_EQ(clip_grad_norm(store, 1.0), 5.0);
  EXPECT_NEAR(store.grads()[0], 0.6f, 1e-6);
  EXPECT_NEAR(store.grads()[1], 0.8f, 1e-6);
}

TEST(LoadMetrics, UniformAndCollapsedExtremes) {
  const std::vector<int64_t> uniform = {5, 5, 5, 5};
  const LoadMetrics u = load_metrics(uniform);
  EXPECT_DOUBLE_EQ(u.gini, 0.0);
  EXPECT_DOUBLE_EQ(u.normalized_entropy, 1.0);
  EXPECT_DOUBLE_EQ(u.cv, 0.0);
  EXPECT_TRUE(u.overloaded.empty() && u.starved.empty());
  const std::vector<int64_t> one = {0, 20, 0, 0};
  const LoadMetrics c = load_metrics(one);
  EXPECT_DOUBLE_EQ(c.gini, 0.75);  // (E-1)/E
  EXPECT_DOUBLE_EQ(c.normalized_entropy, 0.0);
  EXPECT_DOUBLE_EQ(c.max_over_mean, 4.0);
  EXPECT_EQ(c.overloaded, std::vector<int64_t>{1});
  EXPECT_EQ(c.starved, (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(load_bars(std::vector<int64_t>{0, 8, 4}), " \u2588\u2584");
}

TEST(Sampling, GreedyTopKAndTheSoftmaxDistribution) {
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, -1.0f};
  std::vector<std::pair<float, int32_t>> scratch;
  Rng rng(3);
  SamplingOptions greedy;
  greedy.temperature = 0;
  EXPECT_EQ(sample_token(logits, greedy, rng, scratch), 1);
  SamplingOptions top1;
  top1.top_k = 1;
  EXPECT_EQ(sample_token(logits, top1, rng, scratch), 1);
  SamplingOptions plain;
  plain.temperature = 1.0f;
  plain.top_k = 0;
  plain.top_p = 1.0f;
  std::vector<int> hits(4, 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++hits[sample_token(logits, plain, rng, scratch)];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int i = 0; i < 4; ++i)  // 5 standard errors at most
    EXPECT_NEAR(hits[i] / double(n), std::exp(logits[i]) / z, 0.012) << i;
  SamplingOptions nucleus = plain;
  nucleus.top_p = 0.5f;  // token 1 alone holds 0.61 of the mass
  EXPECT_EQ(sample_token(logits, nucleus, rng, scratch), 1);
}

TEST(Tokenizer, TrainsAndRoundTripsLayoutAndUnicode) {
  const std::string dir = temp_dir("tokenizer");
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i)
    texts.push_back("int main(void) {\n\treturn " + std::to_string(i) +
                    ";\n}\n    indented line\nGrüße, élève, niño: " + std::to_string(i * 7));
  TokenizerTrainOptions o;
  o.vocab_size = 300;
  Tokenizer::train(texts, o, dir + "/tok.model");
  const Tokenizer tok(dir + "/tok.model");
  EXPECT_EQ(tok.vocab_size(), 300);
  for (const std::string& s :
       {texts[3], std::string("\n\n  two blank lines\tand a tab\n"), std::string("日本語 ☃")}) {
    const auto ids = tok.encode(s);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 300);
    EXPECT_EQ(tok.decode(ids), s);
  }
  EXPECT_NE(error_of([&] { Tokenizer bad(dir + "/missing.model"); }).find("missing.model"),
            std::string::npos);
}

// Beyond max_text_bytes the tokenizer learns from every n-th document only: a word found only
// in the odd documents becomes a piece without the limit and stays in short pieces with it.
TEST(Tokenizer, LearnsFromEveryNthDocumentBeyondTheByteLimit) {
  const std::string dir = temp_dir("tokenizer_subset");
  std::vector<std::string> texts;
  int64_t total = 0;
  for (int i = 0; i < 200; ++i) {
    texts.push_back(i % 2 ? "zqxvjzqxvj zqxvjzqxvj zqxvjzqxvj zqxvjzqxvj\n"
                          : "int main(void) { return " + std::to_string(i) + "; } // Grüße\n");
    total += static_cast<int64_t>(texts.back().size());
  }
  const auto pieces_of_rare_word = [&](int64_t max_text_bytes) {
    TokenizerTrainOptions o;
    o.vocab_size = 300;
    o.max_text_bytes = max_text_bytes;
    const std::string path = dir + "/tok" + std::to_string(max_text_bytes) + ".model";
    Tokenizer::train(texts, o, path);
    return Tokenizer(path).encode("zqxvjzqxvj").size();
  };
  EXPECT_LE(pieces_of_rare_word(total), 3u);          // all documents: learned pieces
  EXPECT_GE(pieces_of_rare_word(total / 2 + 1), 8u);  // every other one: bytes, unseen
}

void write_gz(const std::string& path, const std::string& content) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, content.data(), static_cast<unsigned>(content.size()));
  gzclose(f);
}

TEST(Corpus, ReadsDocumentsAndNamesBadLines) {
  const std::string dir = temp_dir("corpus");
  write_gz(dir + "/ok.gz",
           "{\"domain\":\"en\",\"source\":\"a\",\"split\":\"train\",\"text\":\"hello\"}\n"
           "{\"domain\":\"de\",\"source\":\"b\",\"split\":\"valid\",\"text\":\"hallo\"}\n");
  const auto docs = read_corpus(dir + "/ok.gz");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1].domain, "de");
  EXPECT_EQ(docs[1].split, "valid");
  write_gz(dir + "/bad.gz",
           "{\"domain\":\"en\",\"source\":\"a\",\"split\":\"train\",\"text\":\"x\"}\n{oops\n");
  EXPECT_NE(error_of([&] { read_corpus(dir + "/bad.gz"); }).find("line 2"), std::string::npos);
  write_gz(dir + "/split.gz",
           "{\"domain\":\"en\",\"source\":\"a\",\"split\":\"test\",\"text\":\"x\"}\n");
  EXPECT_NE(error_of([&] { read_corpus(dir + "/split.gz"); }).find("split"), std::string::npos);
  // A gzip file cut in half.
  std::string big;
  for (int i = 0; i < 2000; ++i)
    big += "{\"domain\":\"en\",\"source\":\"s" + std::to_string(i) +
           "\",\"split\":\"train\",\"text\":\"" + std::to_string(i * 7919) + "\"}\n";
  write_gz(dir + "/cut.gz", big);
  fs::resize_file(dir + "/cut.gz", fs::file_size(dir + "/cut.gz") / 2);
  EXPECT_NE(error_of([&] { read_corpus(dir + "/cut.gz"); }), "");
}

TEST(TokenFile, RoundTripAndLyingHeaders) {
  const std::string dir = temp_dir("tokens");
  const std::vector<int32_t> ids = {1, 2, 3, 4000, 5, 6, 7, 8, 9, 10};
  write_token_file(dir + "/t.tokens", ids, 4096);
  {
    const TokenStream s(dir + "/t.tokens");
    ASSERT_EQ(s.size(), 10);
    EXPECT_EQ(s[3], 4000);
    std::vector<int32_t> tok(2 * 3), tgt(2 * 3);
    eval_batch(s, 0, 2, 3, 3, tok, tgt);  // all 3 windows of 3 tokens: the first two
    EXPECT_EQ(tok, (std::vector<int32_t>{1, 2, 3, 4000, 5, 6}));
    EXPECT_EQ(tgt, (std::vector<int32_t>{2, 3, 4000, 5, 6, 7}));
    std::vector<int32_t> one(4), next(4);  // 2 of the 4 windows of 2 tokens: the 1st and 3rd
    eval_batch(s, 0, 2, 2, 2, one, next);
    EXPECT_EQ(one, (std::vector<int32_t>{1, 2, 5, 6}));
    EXPECT_EQ(next, (std::vector<int32_t>{2, 3, 6, 7}));
    EXPECT_NE(error_of([&] { eval_batch(s, 1, 2, 2, 2, one, next); }), "");  // past `used`
    Rng rng(1);
    sample_batch(s, rng, 2, 3, tok, tgt);
    for (int i = 0; i < 6; i += 3)  // each window is contiguous and targets are shifted by one
      EXPECT_EQ(tok[i + 1], tgt[i]);
  }
  EXPECT_NE(error_of([&] { write_token_file(dir + "/x", std::vector<int32_t>{5000}, 4096); }), "");
  fs::resize_file(dir + "/t.tokens", fs::file_size(dir + "/t.tokens") - 2);
  EXPECT_NE(error_of([&] { TokenStream s(dir + "/t.tokens"); }).find("header"), std::string::npos);
  std::ofstream(dir + "/short.tokens") << "MOE";
  EXPECT_NE(error_of([&] { TokenStream s(dir + "/short.tokens"); }).find("shorter"),
            std::string::npos);
}

ModelConfig small_config() {
  return test::load_model_cases().at("moe_every_other").config;
}

TEST(Checkpoint, ModelFilesRejectMissingMisshapenExtraAndNonFiniteTensors) {
  const std::string dir = temp_dir("model_files");
  ParamStore store;
  Transformer model(small_config(), store);
  store.allocate();
  Rng rng(5);
  model.init_parameters(rng);
  auto tensors = model_tensors(model, store);
  auto attempt = [&](std::map<std::string, Tensor> t) {
    write_safetensors(dir + "/m.safetensors", t);
    return error_of(
        [&] { load_model_tensors(model, store, read_safetensors(dir + "/m.safetensors"), "m"); });
  };
  EXPECT_EQ(attempt(tensors), "");
  auto missing = tensors;
  missing.erase("model.layers.1.block_sparse_moe.experts.2.w3.weight");
  EXPECT_NE(attempt(missing).find("missing tensor 'model.layers.1.block_sparse_moe.experts.2.w3"),
            std::string::npos);
  auto shaped = tensors;
  shaped["model.norm.weight"] = Tensor({3});
  EXPECT_NE(attempt(shaped).find("'model.norm.weight' has shape"), std::string::npos);
  auto extra = tensors;
  extra["model.layers.9.mlp.up_proj.weight"] = Tensor({2, 2});
  EXPECT_NE(attempt(extra).find("unexpected tensor"), std::string::npos);
  auto nan = tensors;
  nan["lm_head.weight"][0] = std::nanf("");
  const std::vector<float> before(store.values().span().begin(), store.values().span().end());
  EXPECT_NE(attempt(nan).find("'lm_head.weight' holds NaN"), std::string::npos);
  // A rejected file leaves the model as it was.
  EXPECT_TRUE(std::equal(before.begin(), before.end(), store.values().span().begin()));
}

TEST(Checkpoint, InterruptedSaveRollsForwardOrBack) {
  const std::string dir = temp_dir("ckpt");
  ParamStore store;
  Transformer model(small_config(), store);
  store.allocate();
  Rng rng(6);
  model.init_parameters(rng);
  AdamW opt(store, {});
  save_checkpoint(dir, model, store, opt, {{"step", 5}});
  EXPECT_EQ(recover_checkpoint(dir)["step"], 5);
  // Killed after the .next files but before the commit: they are dropped.
  fs::copy_file(dir + "/model.safetensors", dir + "/model.safetensors.next");
  write_safetensors(dir + "/optimizer.safetensors.next", {{"x", Tensor({1})}}, {{"step", "6"}});
  EXPECT_EQ(recover_checkpoint(dir)["step"], 5);
  EXPECT_FALSE(fs::exists(dir + "/optimizer.safetensors.next"));
  // Killed after the commit but before the renames: they are finished.
  save_checkpoint(dir, model, store, opt, {{"step", 7}});
  fs::rename(dir + "/model.safetensors", dir + "/model.safetensors.next");
  EXPECT_EQ(recover_checkpoint(dir)["step"], 7);
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  ParamStore store2;
  Transformer model2(small_config(), store2);
  store2.allocate();
  AdamW opt2(store2, {});
  load_checkpoint(dir, recover_checkpoint(dir)["step"], model2, store2, opt2);
  EXPECT_TRUE(std::equal(store.values().span().begin(), store.values().span().end(),
                         store2.values().span().begin()));
  EXPECT_EQ(opt2.steps(), 7);
  // A truncated weights file: an error naming it, and nothing loaded.
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 100);
  EXPECT_NE(
      error_of([&] { load_checkpoint(dir, 7, model2, store2, opt2); }).find("model.safetensors"),
      std::string::npos);
  fs::remove(dir + "/trainer_state.json");
  EXPECT_NE(error_of([&] { recover_checkpoint(dir); }).find("no checkpoint"), std::string::npos);
}

TEST(GradientAccumulation, TwoHalfBatchesEqualOneFullBatch) {
  // Dense model: the loss is a mean over tokens, so half-batches weighted 1/2 each give the
  // full batch's gradient (an MoE's balancing loss is batch-level, so it is not tested here).
  const test::ModelCase c = test::load_model_cases().at("dense");
  ParamStore store;
  Transformer model(c.config, store);
  store.allocate();
  Rng rng(9);
  rng.fill_normal(store.values().span(), 0.0f, 0.3f);
  const int64_t B = 4, S = c.seq, V = c.config.vocab_size;
  std::vector<int32_t> tokens(B * S), targets(B * S);
  for (int64_t i = 0; i < B * S; ++i) {
    tokens[i] = static_cast<int32_t>(rng.next_u64() % V);
    targets[i] = static_cast<int32_t>(rng.next_u64() % V);
  }
  store.zero_grads();
  model.forward(tokens, targets, B, S);
  model.backward();
  const std::vector<float> full(store.grads().span().begin(), store.grads().span().end());
  store.zero_grads();
  ModelStepOptions half;
  half.grad_scale = 0.5f;
  for (int64_t part = 0; part < 2; ++part) {
    const auto first = static_cast<size_t>(part * B / 2 * S),
               count = static_cast<size_t>(B / 2 * S);
    model.forward(std::span(tokens).subspan(first, count), std::span(targets).subspan(first, count),
                  B / 2, S, half);
    model.backward();
  }
  int64_t bad = 0;
  for (size_t i = 0; i < full.size(); ++i)
    bad += !(std::abs(store.grads()[i] - full[i]) <= 1e-6f + 1e-4f * std::abs(full[i]));
  EXPECT_EQ(bad, 0);
}

TEST(Generation, KvCacheDecodeMatchesTheFullForward) {
  for (const char* name : {"dense", "moe_every_other", "moe_deepseek", "long_sequence"}) {
    const test::ModelCase c = test::load_model_cases().at(name);
    ParamStore store;
    Transformer model(c.config, store);
    store.allocate();
    Rng rng(8);
    rng.fill_normal(store.values().span(), 0.0f, 0.3f);
    const int64_t S = c.config.max_position_embeddings, V = c.config.vocab_size;
    std::vector<int32_t> tokens(S), targets(S, -1);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.next_u64() % V);
    ModelStepOptions eval;
    eval.training = false;
    eval.compute_grad = false;
    model.forward(tokens, targets, 1, S, eval);
    const std::vector<float> full(model.logits().begin(), model.logits().end());
    const OwnedWeights weights = test::engine_weights(model, store);
    InferenceModel engine(c.config, HfArch::Mixtral, weights);
    KvCache cache = engine.make_cache(S);
    std::vector<float> logits(V);
    for (int64_t p = 0; p < S; ++p) {
      engine.forward(std::span(tokens).subspan(p, 1), cache, logits);
      for (int64_t v = 0; v < V; ++v)
        ASSERT_NEAR(logits[v], full[p * V + v], 1e-4 + 1e-4 * std::abs(full[p * V + v]))
            << name << " position " << p << " token " << v;
    }
    EXPECT_NE(error_of([&] {
                engine.forward(std::span(tokens).subspan(0, 1), cache, logits);
              }).find("KV cache holds"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace moe
