#include "cli/bench_decode.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "cli/prompt.h"
#include "cli/random_model.h"
#include "infer/inference_model.h"
#include "infer/open_model.h"
#include "model/hf_checkpoint.h"
#include "run/checkpoint.h"
#include "tensor/bandwidth.h"
#include "tensor/bf16.h"
#include "tensor/blas_info.h"
#include "tensor/error.h"
#include "tensor/gemm.h"
#include "tensor/memory_available.h"
#include "tensor/rng.h"
#include "tensor/safetensors.h"
#include "tensor/system_info.h"
#include "tensor/threads.h"

namespace moe::cli {
namespace {

// Whether a folder's tensor stays fp32 when its matrices are rounded to bf16: vectors, and the
// routers, which decide which experts run.
bool stays_f32(const std::string& name, const WeightView& v) {
  return v.shape.size() != 2 || name.ends_with(".gate.weight") ||
         name.ends_with("shared_expert_gate.weight");
}

// An fp32 folder's weights with the matrices rounded to bf16, in memory.
std::unique_ptr<OwnedWeights> bf16_in_memory(const WeightSource& mapped) {
  auto out = std::make_unique<OwnedWeights>();
  for (const std::string& name : mapped.names()) {
    const WeightView v = mapped.at(name);
    require(v.dtype == TensorDtype::F32, name + ": --dtype bf16 rounds an fp32 model's matrices");
    const auto values = v.f32();
    if (stays_f32(name, v)) {
      Tensor t(v.shape, name);
      std::copy(values.begin(), values.end(), t.data());
      out->add_f32(name, std::move(t));
      continue;
    }
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_bf16(values[i]);
    out->add_bf16(name, v.shape, std::move(bits));
  }
  return out;
}

// The same as a bf16 checkpoint file in `folder` (every tensor bf16, as `moe export --dtype
// bf16` writes them), for the expert cache to read from.
std::string bf16_checkpoint(const WeightSource& mapped, const std::string& folder) {
  std::map<std::string, Tensor> tensors;
  for (const std::string& name : mapped.names()) {
    const WeightView v = mapped.at(name);
    require(v.dtype == TensorDtype::F32, name + ": --dtype bf16 rounds an fp32 model's matrices");
    Tensor t(v.shape, name);
    std::copy(v.f32().begin(), v.f32().end(), t.data());
    tensors.emplace(name, std::move(t));
  }
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  require(!ec, folder + ": cannot create: " + ec.message());
  const std::string path = folder + "/model-bf16.safetensors";
  write_safetensors(path, tensors, {}, StoredDtype::BF16);
  return path;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The engine under test, over the weights it reads: a model folder as it lies, or weights made
// here (a random model, or a folder's matrices rounded to bf16), which live in memory or, with
// an expert cache, in a scratch file the cache reads.
struct BenchModel {
  OpenedModel opened;
  std::unique_ptr<WeightSource> source;  // weights made here
  std::unique_ptr<InferenceModel> made;  // the engine over them
  std::string name;
  std::string dtype;  // as the matrices are held: f32, bf16 or a ggml block type
  InferenceModel& decoder() const { return made ? *made : *opened.model; }
};

void open_folder(const BenchDecodeCommand& c, const InferenceOptions& options, BenchModel& m) {
  prepare_for_reading(c.model);
  require(c.dtype.empty() || c.dtype == "f32" || c.dtype == "bf16",
          "--dtype " + c.dtype + " quantizes --random models; a model is run as stored");
  m.name = c.model;
  const bool rounds = c.dtype == "bf16" && [&] {
    const OpenedModel probe = open_model(c.model);
    const WeightView q = probe.weights->at("model.layers.0.self_attn.q_proj.weight");
    return !q.quant && q.dtype == TensorDtype::F32;
  }();
  m.opened = open_model(c.model, rounds ? InferenceOptions{} : options);
  const bool rounds_in_memory = rounds && c.expert_cache == 0;
  require_inference_memory(m.opened.config, c.prompt + c.tokens, c.prompt, c.expert_cache,
                           cached_expert_bytes(*m.opened.model), "bench decode of " + c.model,
                           rounds_in_memory ? 2 * total_parameters(m.opened.config) : 0);
  if (rounds) {
    if (c.expert_cache > 0) {
      const std::string file = bf16_checkpoint(*m.opened.weights, c.scratch);
      m.source = std::make_unique<MappedCheckpoint>(c.scratch, std::vector<std::string>{file});
    } else {
      m.source = bf16_in_memory(*m.opened.weights);
    }
    m.made = std::make_unique<InferenceModel>(m.opened.config, m.opened.arch, *m.source, options);
  }
  const WeightView q = (m.source ? *m.source : static_cast<const WeightSource&>(*m.opened.weights))
                           .at("model.layers.0.self_attn.q_proj.weight");
  // fp16 matrices are widened to fp32
  m.dtype = q.quant ? q.type_name() : q.dtype == TensorDtype::BF16 ? "bf16" : "f32";
}

void make_random(const BenchDecodeCommand& c, const InferenceOptions& options, BenchModel& m) {
  m.name = c.random;
  m.dtype = c.dtype.empty() ? "bf16" : c.dtype;
  const ModelConfig random = random_model_config(c.random);
  const bool as_bf16 = m.dtype == "bf16", quantized = m.dtype != "bf16" && m.dtype != "f32";
  require(!quantized || c.expert_cache == 0,
          "--expert-cache reads an f32 or bf16 checkpoint file; --dtype " + m.dtype +
              " keeps the model in memory");
  require_inference_memory(random, c.prompt + c.tokens, c.prompt, c.expert_cache, 0,
                           "bench decode --random " + c.random,
                           c.expert_cache > 0 ? 0
                           : quantized        ? total_parameters(random)
                                              : (as_bf16 ? 2 : 4) * total_parameters(random));
  if (c.expert_cache > 0) {
    const std::string file = random_checkpoint(random, as_bf16, c.scratch, c.random);
    m.source = std::make_unique<MappedCheckpoint>(c.scratch, std::vector<std::string>{file});
  } else {
    m.source = std::make_unique<OwnedWeights>(random_weights(random, m.dtype));
  }
  m.made = std::make_unique<InferenceModel>(random, HfArch::Mixtral, *m.source, options);
}

// Prefill seconds of `prompt`: best of two, after one warm-up that also touches every weight.
double time_prefill(InferenceModel& decoder, const std::vector<int32_t>& prompt,
                    int64_t cache_length, std::vector<float>& logits) {
  double seconds = 1e30;
  for (int pass = 0; pass < 3; ++pass) {
    KvCache cache = decoder.make_cache(cache_length);
    const auto start = std::chrono::steady_clock::now();
    decoder.forward(prompt, cache, logits);
    if (pass > 0) seconds = std::min(seconds, seconds_since(start));
  }
  return seconds;
}

struct DecodeTiming {
  double seconds = 0;
  double weight_bytes = 0, kv_bytes = 0;  // summed over the steps
  ExpertCacheStats cache;                 // the decode steps' share of the cache's counts
};

// Greedy steps after the prompt; bytes are what each step's weights amount to.
DecodeTiming time_decode(InferenceModel& decoder, const std::vector<int32_t>& prompt, int64_t steps,
                         std::vector<float>& logits) {
  const ModelConfig& config = decoder.config();
  KvCache cache = decoder.make_cache(static_cast<int64_t>(prompt.size()) + steps);
  decoder.forward(prompt, cache, logits);
  const ExpertCacheStats before =
      decoder.expert_cache() ? decoder.expert_cache()->stats() : ExpertCacheStats{};
  DecodeTiming t;
  const double kv_row = 2.0 * config.num_key_value_heads * config.resolved_head_dim() *
                        sizeof(float) * config.num_hidden_layers;
  for (int64_t step = 0; step < steps; ++step) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    const auto start = std::chrono::steady_clock::now();
    decoder.forward({&next, 1}, cache, logits);
    t.seconds += seconds_since(start);
    t.weight_bytes += static_cast<double>(decoder.weight_bytes_read());
    t.kv_bytes += kv_row * static_cast<double>(cache.length);
  }
  if (decoder.expert_cache()) {
    const ExpertCacheStats after = decoder.expert_cache()->stats();
    t.cache = ExpertCacheStats{after.hits - before.hits,
                               after.misses - before.misses,
                               after.prefetched - before.prefetched,
                               after.bytes_read - before.bytes_read,
                               after.direct_io,
                               after.prefetch_used - before.prefetch_used};
  }
  return t;
}

// What one run measured, in the units it is reported in.
struct DecodeReport {
  double prefill_rate = 0, decode_rate = 0;                         // tokens/s
  double bytes_per_token = 0;                                       // weights read per decode step
  double bandwidth = 0, bandwidth_before = 0, bandwidth_after = 0;  // bytes/s
  double share = 0;  // decode's bytes/s over the read bandwidth
  DecodeTiming decode;
  const char* kernel = "";  // the bf16 prefill kernel
};

void print_json(const BenchDecodeCommand& c, const BenchModel& m, const DecodeReport& r) {
  const bool bf16 = m.dtype == "bf16";
  nlohmann::json j = {
      {"model", m.name},
      {"dtype", m.dtype},
      {"threads", thread_count()},
      {"blas_core", blas_core_name()},
      {"bf16_prefill_kernel", bf16 ? r.kernel : "none"},
      {"prompt_tokens", c.prompt},
      {"decode_steps", c.tokens},
      {"prefill_tokens_per_s", r.prefill_rate},
      {"decode_tokens_per_s", r.decode_rate},
      {"weight_bytes_per_token", r.bytes_per_token},
      {"kv_bytes_per_token", r.decode.kv_bytes / static_cast<double>(c.tokens)},
      {"read_bandwidth_gbs", r.bandwidth / 1e9},
      {"read_bandwidth_probes_gbs", {r.bandwidth_before / 1e9, r.bandwidth_after / 1e9}},
      {"bandwidth_share", r.share},
      {"system", system_info()}};
  if (m.decoder().expert_cache()) {
    const ExpertCacheStats& during = r.decode.cache;
    j["expert_cache"] = {{"experts_per_layer", c.expert_cache},
                         {"policy", c.cache_policy},
                         {"prefetch", c.prefetch},
                         {"hit_rate", during.hit_rate()},
                         {"storage_bytes_per_token", double(during.bytes_read) / double(c.tokens)},
                         {"prefetched_per_token", double(during.prefetched) / double(c.tokens)},
                         {"prefetch_recall", during.prefetch_recall()},
                         {"prefetch_precision", during.prefetch_precision()},
                         {"direct_io", during.direct_io}};
  }
  std::printf("%s\n", j.dump(2).c_str());
}

void print_table(const BenchDecodeCommand& c, const BenchModel& m, const DecodeReport& r) {
  const bool bf16 = m.dtype == "bf16";
  std::printf("model %s, %s weights, %d threads, OpenBLAS core %s%s\n", m.name.c_str(),
              m.dtype.c_str(), thread_count(), blas_core_name(),
              bf16 ? (std::string(", bf16 prefill kernel ") + r.kernel).c_str() : "");
  std::printf("prefill  %5lld tokens   %8.1f tokens/s\n", static_cast<long long>(c.prompt),
              r.prefill_rate);
  std::printf("decode   %5lld steps    %8.1f tokens/s   %.1f MB of weights per token\n",
              static_cast<long long>(c.tokens), r.decode_rate, r.bytes_per_token / 1e6);
  std::printf(
      "read bandwidth %.1f GB/s (the larger of %.1f before prefill and %.1f after decode): "
      "decode reaches %.0f%% of it\n",
      r.bandwidth / 1e9, r.bandwidth_before / 1e9, r.bandwidth_after / 1e9, 100.0 * r.share);
  const ExpertCacheStats& during = r.decode.cache;
  if (m.decoder().expert_cache())
    std::printf(
        "expert cache %lld/layer %s%s: hit rate %.1f%%, %.1f MB read from storage per "
        "token%s\n",
        static_cast<long long>(c.expert_cache), c.cache_policy.c_str(),
        c.prefetch ? " + prefetch" : "", 100.0 * during.hit_rate(),
        double(during.bytes_read) / double(c.tokens) / 1e6,
        during.direct_io ? "" : " (no O_DIRECT here: page cache dropped after each read)");
}

}  // namespace

CLI::App* add_bench_decode_command(CLI::App& bench, BenchDecodeCommand& c) {
  CLI::App* cmd = bench.add_subcommand(
      "decode", "Prefill and decode tokens/s, and decode's share of the read bandwidth");
  cmd->add_option("-m,--model", c.model,
                  "A run folder, a Hugging Face checkpoint folder (mixtral, qwen2_moe, olmoe) or a "
                  "GGUF file (llama, qwen2moe, olmoe), mapped as it lies")
      ->check(CLI::ExistingPath);
  cmd->add_option("--random", c.random, "Model built in memory: mixtral-d1024 or mixtral-d512")
      ->capture_default_str()
      ->check(CLI::IsMember({"mixtral-d1024", "mixtral-d512"}));
  cmd->add_option("--dtype", c.dtype,
                  "Matrices: f32, bf16, or for --random also ggml's q8_0, q4_0 or q4_k blocks "
                  "(default: bf16 for --random, as stored for --model; an fp32 model asked for "
                  "bf16 is rounded first)")
      ->check(CLI::IsMember({"f32", "bf16", "q8_0", "q4_0", "q4_k"}));
  cmd->add_option("--n-prompt", c.prompt, "Prompt tokens prefilled (llama-bench's -p)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{2048}));
  cmd->add_option("--n-gen", c.tokens, "Tokens decoded, one step each, timed (llama-bench's -n)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{2048}));
  cmd->add_flag("--json", c.json, "Print one JSON object");
  cmd->add_option("--expert-cache", c.expert_cache,
                  "Experts per layer kept in RAM, the rest read from storage on demand (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 16));
  cmd->add_option("--cache-policy", c.cache_policy, "Expert cache eviction: lru or lfu")
      ->capture_default_str()
      ->check(CLI::IsMember({"lru", "lfu"}));
  cmd->add_flag("--prefetch", c.prefetch,
                "Read the next layer's likely experts while this layer computes");
  cmd->add_option("--scratch", c.scratch,
                  "Folder for the checkpoint file an expert cache reads when the weights are "
                  "made here (--random, or --dtype bf16 of an fp32 model)")
      ->capture_default_str();
  return cmd;
}

int run_bench_decode(const BenchDecodeCommand& c) {
  InferenceOptions options;
  options.expert_cache = c.expert_cache;
  options.cache_policy = c.cache_policy == "lfu" ? CachePolicy::Lfu : CachePolicy::Lru;
  options.prefetch = c.prefetch;
  BenchModel m;
  if (!c.model.empty())
    open_folder(c, options, m);
  else
    make_random(c, options, m);
  InferenceModel& decoder = m.decoder();
  warn_about_blas_kernel();  // once the model is open: a bad folder's error stays one line
  const int64_t V = decoder.config().vocab_size;

  // The bandwidth is probed before prefill and again after decode, and the larger reading
  // counts: this virtual machine's bandwidth drifts from minute to minute, and a probe that
  // caught a dip would flatter decode's share (shares above 1 were seen with one probe).
  // The probe's buffer: 1 GiB, or a third of the memory still free under a limit (a memory
  // cgroup that holds the model below its size), which is still far beyond the caches.
  const int64_t probe_bytes =
      static_cast<int64_t>(std::min<uint64_t>(uint64_t{1} << 30, available_memory().bytes / 3));
  DecodeReport r;
  r.bandwidth_before = measure_read_bandwidth(probe_bytes);
  Rng rng(2);
  std::vector<int32_t> prompt(static_cast<size_t>(c.prompt));
  for (auto& t : prompt) t = static_cast<int32_t>(rng.next_u64() % V);
  std::vector<float> logits(static_cast<size_t>(V));
  const double prefill_seconds = time_prefill(decoder, prompt, c.prompt + c.tokens, logits);
  r.decode = time_decode(decoder, prompt, c.tokens, logits);
  r.decode_rate = static_cast<double>(c.tokens) / r.decode.seconds;
  r.bandwidth_after = measure_read_bandwidth(probe_bytes);
  r.bandwidth = std::max(r.bandwidth_before, r.bandwidth_after);
  r.bytes_per_token = r.decode.weight_bytes / static_cast<double>(c.tokens);
  r.share = r.bytes_per_token * r.decode_rate / r.bandwidth;
  r.prefill_rate = static_cast<double>(c.prompt) / prefill_seconds;
  r.kernel = resolve_bf16_kernel(Bf16Kernel::Auto) == Bf16Kernel::Avx512Bf16 ? "avx512-bf16"
                                                                             : "widen+sgemm";
  if (c.json)
    print_json(c, m, r);
  else
    print_table(c, m, r);
  return 0;
}

}  // namespace moe::cli
