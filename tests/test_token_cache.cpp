// Tokens prepared once (text/token_cache.h), the digest that keys them (tensor/sha256.h), and
// the memory check before a run (model/memory_estimate.h, tensor/memory_available.h).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "tensor/memory_available.h"
#include "tensor/sha256.h"
#include "test_util.h"
#include "text/token_cache.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using test::temp_dir;

std::string contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---- SHA-256 -----------------------------------------------------------------------------

TEST(Sha256, KnownDigestsAndPiecewiseUpdates) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1'000'000, 'a');
  Sha256 pieces;  // uneven pieces across block boundaries give the same digest
  for (size_t at = 0; at < million.size();) {
    const size_t n = std::min<size_t>(1 + at % 97, million.size() - at);
    pieces.update(std::string_view(million).substr(at, n));
    at += n;
  }
  EXPECT_EQ(pieces.hex_digest(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  const std::string dir = temp_dir("sha");
  write(dir + "/f", "abc");
  EXPECT_EQ(sha256_file(dir + "/f"), sha256_hex("abc"));
  EXPECT_TRUE(contains(error_of([&] { sha256_file(dir + "/none"); }), dir + "/none"));
}

// ---- available memory --------------------------------------------------------------------

TEST(AvailableMemory, ParsesProcAndCgroupFiles) {
  EXPECT_EQ(
      parse_meminfo_available("MemTotal:  8000 kB\nMemFree: 10 kB\nMemAvailable:    1024 kB\n"),
      uint64_t{1} << 20);
  EXPECT_FALSE(parse_meminfo_available("MemTotal: 8000 kB\n"));
  EXPECT_EQ(parse_status_field("Name:\tmoe\nVmSize:\t  2048 kB\nVmData:\t 4 kB\n", "VmSize"),
            uint64_t{2} << 20);
  EXPECT_EQ(parse_stat_field("active_file 5\ninactive_file 700\n", "inactive_file"), 700u);
  EXPECT_EQ(parse_stat_field("total_inactive_file 9\ninactive_file 7\n", "inactive_file"), 7u);
  // The headroom under a limit: what the working set (usage less inactive files) leaves.
  EXPECT_EQ(cgroup_headroom("1000\n", 600, 100), 500u);
  EXPECT_EQ(cgroup_headroom("1000\n", 1200, 100), 0u);
  EXPECT_FALSE(cgroup_headroom("max\n", 600, 0));
  EXPECT_FALSE(cgroup_headroom("9223372036854771712\n", 600, 0));  // v1's "no limit"
  const CgroupPaths v2 = parse_proc_cgroup("0::/user.slice/session-1.scope\n");
  EXPECT_EQ(v2.v2, "/user.slice/session-1.scope");
  EXPECT_FALSE(v2.v1_memory);
  const CgroupPaths v1 = parse_proc_cgroup("5:cpu,cpuacct:/a\n4:memory:/docker/abc\n0::/\n");
  EXPECT_EQ(v1.v1_memory, "/docker/abc");
  EXPECT_EQ(v1.v2, "/");
  // This machine: at least MemAvailable is known, and the least limit is the one named.
  const AvailableMemory here = available_memory();
  ASSERT_FALSE(here.limited_by.empty());
  for (const MemoryLimit& limit : here.limits) EXPECT_GE(limit.headroom, here.bytes);
  EXPECT_TRUE(contains(here.describe(), here.limited_by));
}

// ---- the training memory estimate --------------------------------------------------------

TEST(MemoryEstimate, CountsTheStateAndScalesWithTheBatch) {
  const ModelConfig config = default_model_config();
  const double params = double(count_params(arch_from_model_config(config, "x")).total);
  TrainingShape shape{32, 128, 2, 1};
  const MemoryEstimate at32 = estimate_training_memory(config, shape);
  EXPECT_EQ(at32.parameters, uint64_t(params * 4));
  EXPECT_EQ(at32.gradients, at32.parameters);
  EXPECT_EQ(at32.optimizer_state, 2 * at32.parameters);
  EXPECT_EQ(at32.logits, uint64_t(32 * 128) * uint64_t(config.vocab_size) * 4);
  EXPECT_EQ(at32.checkpoint, 2 * at32.parameters);  // a save copies the two moments
  EXPECT_GT(at32.headroom, at32.total() / 7);       // a fifth of the rest
  EXPECT_GT(at32.address_space, 0u);                // the second thread's reservations
  shape.batch = 64;
  const MemoryEstimate at64 = estimate_training_memory(config, shape);
  // Activations and logits are per token: twice the batch, twice the bytes.
  EXPECT_NEAR(double(at64.activations), 2.0 * double(at32.activations), 4.0);
  EXPECT_EQ(at64.logits, 2 * at32.logits);
  EXPECT_GT(at64.total(), at32.total());
  EXPECT_EQ(at64.parameters, at32.parameters);
  // Every part is named; total() is their sum.
  uint64_t sum = 0;
  for (const auto& [name, bytes] : at64.parts()) sum += bytes;
  EXPECT_EQ(sum, at64.total());
  EXPECT_TRUE(contains(describe_memory_estimate(at64), "activations"));
  // A resume reads the whole checkpoint first: at a small batch that is the peak.
  const MemoryEstimate resumed = estimate_training_memory(config, {1, 128, 2, 1, true});
  EXPECT_GT(resumed.checkpoint, 2 * at32.parameters);
  // Expert parallelism: each process holds 1/P of the experts and of the batch.
  shape.processes = 2;
  const MemoryEstimate half = estimate_training_memory(config, shape);
  EXPECT_LT(half.parameters, at64.parameters);
  EXPECT_EQ(half.logits, at32.logits);
}

TEST(MemoryEstimate, InferenceCountsTheKvCacheAndEvaluationNoTrainingState) {
  const ModelConfig config = default_model_config();
  InferenceShape shape;
  shape.positions = 200;
  shape.prompt = 50;
  const MemoryEstimate e = estimate_inference_memory(config, shape);
  // Keys and values of every block, fp32: layers x positions x 2 x KV heads x head_dim x 4.
  const uint64_t kv = uint64_t(config.num_hidden_layers) * 200 * 2 *
                      uint64_t(config.num_key_value_heads * config.resolved_head_dim()) * 4;
  EXPECT_EQ(e.kv_cache, kv);
  EXPECT_EQ(e.logits, uint64_t(config.vocab_size) * 4);
  EXPECT_EQ(e.parameters, 0u);  // the weights are mapped, not held
  EXPECT_TRUE(contains(describe_memory_estimate(e), "KV cache"));
  shape.positions = 400;
  EXPECT_EQ(estimate_inference_memory(config, shape).kv_cache, 2 * kv);
  // An expert cache holds N experts of each MoE layer (counted as fp32).
  shape.cached_experts = 2;
  const uint64_t expert = 3 * uint64_t(config.hidden_size * config.moe->moe_intermediate_size) * 4;
  EXPECT_EQ(estimate_inference_memory(config, shape).parameters,
            2 * uint64_t(config.num_moe_layers()) * expert);
  // At their stored size where known: quantized experts take a fraction of that.
  shape.cached_expert_bytes = 12345;
  EXPECT_EQ(estimate_inference_memory(config, shape).parameters,
            2 * uint64_t(config.num_moe_layers()) * 12345);
  // Evaluation holds the fp32 model and a forward's activations; no gradients or moments.
  const MemoryEstimate eval = estimate_evaluation_memory(config, {32, 128, 2, 1});
  const MemoryEstimate train = estimate_training_memory(config, {32, 128, 2, 1});
  EXPECT_EQ(eval.parameters, train.parameters);
  EXPECT_EQ(eval.activations, train.activations);
  EXPECT_EQ(eval.gradients + eval.optimizer_state + eval.checkpoint, 0u);
  EXPECT_LT(eval.total(), train.total());
}

TEST(MemoryEstimate, SaturatesInsteadOfWrapping) {
  ModelConfig config = default_model_config();
  config.vocab_size = int64_t{1} << 24;
  const MemoryEstimate e =
      estimate_training_memory(config, {int64_t{1} << 20, int64_t{1} << 20, 2, 1});
  EXPECT_EQ(e.total(), UINT64_MAX);
}

TEST(MemoryEstimate, RefusesInOneLineWithTheFigureAndTheLimit) {
  MemoryEstimate estimate;
  estimate.activations = uint64_t{3} << 30;
  estimate.address_space = uint64_t{1} << 29;
  AvailableMemory available;
  available.limits = {{"MemAvailable", uint64_t{4} << 30, false}};
  EXPECT_TRUE(memory_fits(estimate, available));
  EXPECT_EQ(error_of([&] { require_memory(estimate, "x", available, "advice"); }), "");
  available.limits.push_back({"ulimit -v", uint64_t{13} << 28, true});  // 3.25 GiB
  EXPECT_FALSE(memory_fits(estimate, available));  // 3 GiB used + 0.5 GiB reserved
  EXPECT_EQ(error_of([&] {
              require_memory(estimate, "training at --batch-size 9", available, "advice");
            }),
            "out of memory: training at --batch-size 9 needs 3.0 GiB, and 512.0 MiB more "
            "address space, but 3.2 GiB (ulimit -v) is available; advice");
  available.limits = {{"cgroup memory.max", uint64_t{1} << 30, false}};
  EXPECT_EQ(error_of([&] { require_memory(estimate, "x", available, "lower --batch-size"); }),
            "out of memory: x needs 3.0 GiB, but 1.0 GiB (cgroup memory.max) is available; "
            "lower --batch-size");
}

// ---- the token cache -----------------------------------------------------------------------

// A plain-text corpus of 64 documents, enough for a 300-piece vocabulary.
std::string make_corpus(const std::string& dir, const std::string& extra = "") {
  std::string text;
  for (int i = 0; i < 64; ++i)
    text += "int main(void) {\n\treturn " + std::to_string(i) + ";\n}\nGrüße, élève " +
            std::to_string(i * 7) + extra + "\n\n";
  const std::string path = dir + "/notes.txt";
  write(path, text);
  return path;
}

RunDataRequest request_for(const std::string& corpus, const std::string& cache) {
  RunDataRequest r;
  r.corpus = corpus;
  r.vocab_size = 300;
  r.cache_dir = cache;
  r.quiet = true;
  return r;
}

std::string fresh_run(const std::string& root, const std::string& name) {
  const std::string run = root + "/" + name;
  fs::create_directories(run);
  return run;
}

TEST(TokenCache, SecondRunReusesTokenizerAndTokens) {
  const std::string dir = temp_dir("reuse"), cache = dir + "/cache";
  const std::string corpus = make_corpus(dir);
  const std::string run1 = fresh_run(dir, "run1"), run2 = fresh_run(dir, "run2");
  const RunDataResult first = prepare_run_data(request_for(corpus, cache), run1);
  EXPECT_FALSE(first.tokenizer_cached);
  EXPECT_FALSE(first.tokens_cached);
  const RunDataResult second = prepare_run_data(request_for(corpus, cache), run2);
  EXPECT_TRUE(second.tokenizer_cached);
  EXPECT_TRUE(second.tokens_cached);
  EXPECT_EQ(first.tokens_dir, second.tokens_dir);
  EXPECT_TRUE(first.tokens_dir.starts_with(fs::absolute(cache).string() + "/tokens/"));
  // The run folders hold their tokenizer and refer to the tokens; they copy no token file.
  EXPECT_EQ(contents(run1 + "/tokenizer.model"), contents(run2 + "/tokenizer.model"));
  EXPECT_FALSE(fs::exists(run2 + "/data/train.tokens"));
  const auto source = nlohmann::json::parse(contents(run2 + "/data/source.json"));
  EXPECT_EQ(source["cache_entry"], second.tokens_dir);
  EXPECT_EQ(source["tokenizer_sha256"], sha256_file(run2 + "/tokenizer.model"));
  EXPECT_EQ(run_tokens_dir(run2), second.tokens_dir);
  // Nothing but whole entries in the cache: no temporary folder stays behind.
  for (const char* kind : {"/tokens", "/tokenizers"})
    for (const auto& e : fs::directory_iterator(cache + kind))
      EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
}

TEST(TokenCache, CopyDataAndNoCacheKeepTheRunSelfContained) {
  const std::string dir = temp_dir("copy"), cache = dir + "/cache";
  const std::string corpus = make_corpus(dir);
  const std::string cached = fresh_run(dir, "cached"), copied = fresh_run(dir, "copied");
  const std::string alone = fresh_run(dir, "alone");
  const RunDataResult reference = prepare_run_data(request_for(corpus, cache), cached);
  RunDataRequest copy = request_for(corpus, cache);
  copy.copy_data = true;
  EXPECT_EQ(prepare_run_data(copy, copied).tokens_dir, copied + "/data");
  EXPECT_EQ(run_tokens_dir(copied), copied + "/data");
  const RunDataResult none = prepare_run_data(request_for(corpus, ""), alone);
  EXPECT_EQ(none.tokens_dir, alone + "/data");
  for (const char* name : {"/train.tokens", "/valid.tokens", "/documents.jsonl"}) {
    EXPECT_EQ(contents(copied + "/data" + name), contents(reference.tokens_dir + name)) << name;
    EXPECT_EQ(contents(alone + "/data" + name), contents(reference.tokens_dir + name)) << name;
  }
  // A self-contained run that lost a token file names it.
  fs::remove(alone + "/data/valid.tokens");
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(alone); }), alone + "/data/valid.tokens"));
  fs::remove(alone + "/data/train.tokens");
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(alone); }), alone + "/data/train.tokens"));
}

TEST(TokenCache, BrokenOrHalfWrittenEntriesAreRebuiltNeverUsed) {
  const std::string dir = temp_dir("broken"), cache = dir + "/cache";
  const std::string corpus = make_corpus(dir);
  const std::string run = fresh_run(dir, "run");
  const std::string entry = prepare_run_data(request_for(corpus, cache), run).tokens_dir;
  const std::string tokens = contents(entry + "/train.tokens");
  // One byte changed: refused by name, and rebuilt to the same bytes.
  std::string changed = tokens;
  changed[changed.size() / 2] ^= 1;
  write(entry + "/train.tokens", changed);
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(run); }),
                       entry + "/train.tokens' does not match its digest"));
  const std::string again = fresh_run(dir, "again");
  EXPECT_FALSE(prepare_run_data(request_for(corpus, cache), again).tokens_cached);
  EXPECT_EQ(contents(entry + "/train.tokens"), tokens);
  // Truncated, and an entry without its manifest (killed before it was complete).
  write(entry + "/valid.tokens", "MOETOK1");
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(run); }), "not the size its entry lists"));
  EXPECT_EQ(run_tokens_dir(run, /*rebuild=*/true), entry);
  fs::remove(entry + "/entry.json");
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(run); }), "half-written"));
  const std::string third = fresh_run(dir, "third");
  EXPECT_FALSE(prepare_run_data(request_for(corpus, cache), third).tokens_cached);
  EXPECT_EQ(run_tokens_dir(run), entry);
  // A broken cached tokenizer is trained again.
  write(fs::path(cache + "/tokenizers").string() + "/" +
            fs::directory_iterator(cache + "/tokenizers")->path().filename().string() +
            "/tokenizer.model",
        "garbage");
  const std::string fourth = fresh_run(dir, "fourth");
  const RunDataResult retrained = prepare_run_data(request_for(corpus, cache), fourth);
  EXPECT_FALSE(retrained.tokenizer_cached);
  EXPECT_TRUE(retrained.tokens_cached);  // the same tokenizer again: the same tokens
}

TEST(TokenCache, AGoneEntryIsRebuiltFromTheCorpusOrNamed) {
  const std::string dir = temp_dir("gone"), cache = dir + "/cache";
  const std::string corpus = make_corpus(dir);
  const std::string run = fresh_run(dir, "run");
  const std::string entry = prepare_run_data(request_for(corpus, cache), run).tokens_dir;
  const std::string tokens = contents(entry + "/train.tokens");
  fs::remove_all(cache);
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(run); }), "'" + entry + "' is missing"));
  EXPECT_EQ(run_tokens_dir(run, /*rebuild=*/true), entry);
  EXPECT_EQ(contents(entry + "/train.tokens"), tokens);
  // The corpus changed since: the run's tokens cannot be made again, and the error says why.
  fs::remove_all(cache);
  make_corpus(dir, " changed");
  const std::string message = error_of([&] { run_tokens_dir(run, true); });
  EXPECT_TRUE(contains(message, "'" + entry + "' is missing")) << message;
  EXPECT_TRUE(contains(message, corpus + "' has changed")) << message;
  fs::remove(corpus);
  EXPECT_TRUE(contains(error_of([&] { run_tokens_dir(run, true); }), corpus + "' is gone"));
  // No data/ at all: both files it could have are named.
  fs::remove_all(run + "/data");
  const std::string lost = error_of([&] { run_tokens_dir(run, true); });
  EXPECT_TRUE(contains(lost, run + "/data/train.tokens")) << lost;
  EXPECT_TRUE(contains(lost, run + "/data/source.json")) << lost;
}

TEST(TokenCache, AbandonedTemporariesAreRemoved) {
  const std::string dir = temp_dir("abandoned"), cache = dir + "/cache";
  const std::string corpus = make_corpus(dir);
  // Left by a writer that was killed (no process has this id: above the kernel's pid_max).
  fs::create_directories(cache + "/tokens/.tmp-99999999-abcdef");
  write(cache + "/tokens/.tmp-99999999-abcdef/train.tokens", "half");
  prepare_run_data(request_for(corpus, cache), fresh_run(dir, "run"));
  EXPECT_FALSE(fs::exists(cache + "/tokens/.tmp-99999999-abcdef"));
}

TEST(CorpusDigest, KeysOnContentAndOnThePathOnlyWhereSourcesNameIt) {
  const std::string dir = temp_dir("digest");
  const std::string corpus = make_corpus(dir);
  fs::copy_file(corpus, dir + "/other.txt");
  // Plain text: its documents' sources name the file, so the path is part of the key.
  EXPECT_NE(corpus_digest(corpus, true), corpus_digest(dir + "/other.txt", true));
  write(dir + "/a.jsonl",
        "{\"domain\":\"d\",\"source\":\"s\",\"split\":\"train\",\"text\":\"x\"}\n");
  fs::create_directories(dir + "/elsewhere");
  fs::copy_file(dir + "/a.jsonl", dir + "/elsewhere/a.jsonl");
  EXPECT_EQ(corpus_digest(dir + "/a.jsonl", true), corpus_digest(dir + "/elsewhere/a.jsonl", true));
  // A folder: every file that is read counts; hidden ones do not.
  fs::create_directories(dir + "/folder/code");
  write(dir + "/folder/code/a.c", "int a;");
  const std::string before = corpus_digest(dir + "/folder", true);
  write(dir + "/folder/.hidden", "ignored");
  EXPECT_EQ(corpus_digest(dir + "/folder", true), before);
  write(dir + "/folder/code/a.c", "int b;");
  EXPECT_NE(corpus_digest(dir + "/folder", true), before);
  EXPECT_TRUE(contains(error_of([&] { corpus_digest(dir + "/none", true); }), "does not exist"));
}

}  // namespace
}  // namespace moe
