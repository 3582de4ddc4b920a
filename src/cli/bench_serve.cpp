#include "cli/bench_serve.h"

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "cli/prompt.h"
#include "cli/random_model.h"
#include "infer/batch_scheduler.h"
#include "infer/inference_model.h"
#include "infer/open_model.h"
#include "tensor/bandwidth.h"
#include "tensor/blas_info.h"
#include "tensor/error.h"
#include "tensor/rng.h"
#include "tensor/system_info.h"
#include "tensor/threads.h"

namespace moe::cli {
namespace {

using Clock = std::chrono::steady_clock;

double milliseconds(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// The value below which a share `p` of `sorted` lies (nearest rank); 0 for none.
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = size_t(std::ceil(p * double(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// The model the bench runs: opened from a path as it lies, or made in memory.
struct BenchModel {
  OpenedModel opened;
  std::unique_ptr<OwnedWeights> weights;  // --random's
  std::unique_ptr<InferenceModel> made;   // the engine over them
  std::string name, dtype;
  InferenceModel& engine() { return made ? *made : *opened.model; }
};

// Refuses requests longer than the model's context before anything is built or measured.
void require_context(const ModelConfig& config, const BenchServeCommand& c,
                     const std::string& name) {
  const int64_t positions = c.prompt + c.tokens;
  require(positions <= config.max_position_embeddings,
          "--n-prompt + --n-gen = " + std::to_string(positions) + " positions, more than " + name +
              "'s context of " + std::to_string(config.max_position_embeddings));
}

BenchModel open_bench_model(const BenchServeCommand& c, int64_t slots) {
  BenchModel m;
  const int64_t positions = c.prompt + c.tokens;
  const std::string what = "bench serve of " + std::to_string(slots) + " slots of " +
                           std::to_string(positions) + " positions";
  if (!c.model.empty()) {
    require(c.dtype.empty(), "--dtype applies to --random models; a model is run as stored");
    prepare_for_reading(c.model);
    m.opened = open_model(c.model);
    m.name = c.model;
    require_context(m.opened.config, c, m.name);
    require_inference_memory(m.opened.config, positions * slots, c.prefill_chunk, 0, 0, what);
    const WeightView q = m.opened.weights->at("model.layers.0.self_attn.q_proj.weight");
    m.dtype = q.quant ? q.type_name() : q.dtype == TensorDtype::BF16 ? "bf16" : "f32";
    return m;
  }
  const ModelConfig config = random_model_config(c.random);
  m.name = c.random;
  m.dtype = c.dtype.empty() ? "bf16" : c.dtype;
  require_context(config, c, m.name);
  const bool quantized = m.dtype != "bf16" && m.dtype != "f32";
  const uint64_t bytes_per_value = quantized ? 1 : m.dtype == "bf16" ? 2 : 4;
  require_inference_memory(config, positions * slots, c.prefill_chunk, 0, 0, what,
                           bytes_per_value * total_parameters(config));
  m.weights = std::make_unique<OwnedWeights>(random_weights(config, m.dtype));
  m.made = std::make_unique<InferenceModel>(config, HfArch::Mixtral, *m.weights);
  return m;
}

// What one concurrency level measured (its timed window only).
struct LevelResult {
  int64_t clients = 0, requests = 0, tokens = 0;
  double seconds = 0;                           // the timed window
  std::vector<double> gaps_ms, first_token_ms;  // sorted
  SchedulerStats decode;                        // the window's decode figures
  double rows_per_step() const { return double(decode.decode_rows) / double(decode.decode_steps); }
  double bytes_per_step() const {
    return double(decode.decode_weight_bytes + decode.decode_kv_bytes) /
           double(decode.decode_steps);
  }
};

// One client's requests and what it saw of them.
struct Client {
  Rng rng;
  std::vector<double> gaps_ms, first_token_ms;
  int64_t tokens = 0;
  Clock::time_point last_token;
  std::string error;  // the first failure; the client stops submitting after it
};

// Submits one request and reads its tokens as they arrive; `timed` ones are recorded.
bool run_request(BatchScheduler& scheduler, const BenchServeCommand& c, int64_t vocab, Client& me,
                 bool timed) {
  BatchRequest request;
  request.prompt.resize(size_t(c.prompt));
  for (int32_t& t : request.prompt) t = int32_t(me.rng.next_u64() % uint64_t(vocab));
  request.max_tokens = c.tokens;
  request.sampling.temperature = 0;
  const Clock::time_point submitted = Clock::now();
  std::shared_ptr<GenerationStream> stream;
  try {
    stream = scheduler.submit(std::move(request));
  } catch (const std::exception& e) {
    me.error = e.what();
    return false;
  }
  if (!stream) {
    me.error = "the scheduler refused a request (queue full or closed)";
    return false;
  }
  std::vector<TokenEvent> events;
  Clock::time_point previous = submitted;
  int64_t seen = 0;
  for (bool finished = false; !finished;) {
    finished = stream->wait(events, std::chrono::milliseconds(1000));
    const Clock::time_point now = Clock::now();
    // Tokens that arrived together were seen together: the gaps after the first are 0.
    for (size_t i = 0; i < events.size(); ++i, ++seen) {
      if (timed)
        (seen == 0 ? me.first_token_ms : me.gaps_ms).push_back(milliseconds(now - previous));
      previous = now;
    }
    events.clear();
  }
  if (stream->finish_reason() != FinishReason::Length || seen != c.tokens) {
    me.error = std::string("a request ended '") + finish_reason_name(stream->finish_reason()) +
               "' after " + std::to_string(seen) + " of " + std::to_string(c.tokens) + " tokens" +
               (stream->error().empty() ? "" : ": " + stream->error());
    return false;
  }
  if (timed) {
    me.tokens += seen;
    me.last_token = previous;
  }
  return true;
}

// `clients` concurrent clients on as many slots: one warm-up request each, then, from the
// moment all are warm, `requests_per_client` timed ones each.
LevelResult run_level(InferenceModel& engine, const BenchServeCommand& c, int64_t clients) {
  BatchScheduler scheduler(engine, {.parallel = clients,
                                    .context = c.prompt + c.tokens,
                                    .prefill_chunk = c.prefill_chunk,
                                    .max_queue = clients});
  scheduler.start();
  std::vector<Client> people(static_cast<size_t>(clients));
  for (int64_t i = 0; i < clients; ++i) people[size_t(i)].rng = Rng(uint64_t(1000 * clients + i));
  SchedulerStats before;
  Clock::time_point start;
  // The window opens once every client's warm-up request has finished: its decode figures
  // (counted before a request's last token is handed out) are all in `before` by then.
  std::barrier start_line(clients, [&]() noexcept {
    before = scheduler.stats();
    start = Clock::now();
  });
  const int64_t vocab = engine.config().vocab_size;
  std::vector<std::thread> threads;
  for (Client& me : people)
    threads.emplace_back([&] {
      bool ok = run_request(scheduler, c, vocab, me, false);
      start_line.arrive_and_wait();
      for (int64_t r = 0; r < c.requests_per_client && ok; ++r)
        ok = run_request(scheduler, c, vocab, me, true);
    });
  for (std::thread& t : threads) t.join();
  const SchedulerStats after = scheduler.stats();
  scheduler.stop();

  LevelResult level;
  level.clients = clients;
  Clock::time_point end = start;
  for (const Client& me : people) {
    if (!me.error.empty())
      throw Error("bench serve, " + std::to_string(clients) + " clients: " + me.error);
    level.tokens += me.tokens;
    end = std::max(end, me.last_token);
    level.gaps_ms.insert(level.gaps_ms.end(), me.gaps_ms.begin(), me.gaps_ms.end());
    level.first_token_ms.insert(level.first_token_ms.end(), me.first_token_ms.begin(),
                                me.first_token_ms.end());
  }
  std::sort(level.gaps_ms.begin(), level.gaps_ms.end());
  std::sort(level.first_token_ms.begin(), level.first_token_ms.end());
  level.requests = clients * c.requests_per_client;
  level.seconds = std::chrono::duration<double>(end - start).count();
  level.decode = after;
  level.decode.decode_steps -= before.decode_steps;
  level.decode.decode_rows -= before.decode_rows;
  level.decode.distinct_experts -= before.distinct_experts;
  level.decode.decode_weight_bytes -= before.decode_weight_bytes;
  level.decode.decode_kv_bytes -= before.decode_kv_bytes;
  level.decode.decode_seconds -= before.decode_seconds;
  require(level.decode.decode_steps > 0, "bench serve: no decode step was timed");
  return level;
}

// What a single token's decode step reads at the mean position of a request's decode steps
// (prompt + n_gen / 2 positions of keys and values): the bound's unit.
double single_token_bytes(InferenceModel& engine, const BenchServeCommand& c) {
  KvCache cache = engine.make_cache(2);
  std::vector<float> logits(size_t(engine.config().vocab_size));
  const int32_t token = 0;
  engine.forward({&token, 1}, cache, logits);
  int64_t kv_values = 0;  // per position, every block
  for (size_t b = 0; b < cache.keys.size(); ++b)
    kv_values += (cache.keys[b].numel() + cache.values[b].numel()) / cache.capacity;
  const double positions = double(c.prompt) + double(c.tokens) / 2;
  return double(engine.weight_bytes_read()) + positions * double(kv_values) * sizeof(float);
}

struct Derived {  // a level's figures against the bound
  double tokens_per_s, decode_tokens_per_s, bound, share, bound_speedup;
  std::optional<double> speedup;  // over one client, where one client was measured
};

// Everything a run measured, and the figures derived from it.
struct Measured {
  std::string model, dtype;
  int64_t num_experts = 0, top_k = 0, moe_layers = 0;
  double bandwidth_before = 0, bandwidth_after = 0, one_token_bytes = 0;
  std::vector<LevelResult> levels;

  // The larger probe counts, as in bench decode (the bandwidth of this virtual machine
  // drifts; a probe caught in a dip would flatter the shares).
  double bandwidth() const { return std::max(bandwidth_before, bandwidth_after); }
  double single_bound() const { return bandwidth() / one_token_bytes; }
  std::optional<double> one_client() const {  // the first one-client level's tokens/s
    for (const LevelResult& l : levels)
      if (l.clients == 1) return double(l.tokens) / l.seconds;
    return std::nullopt;
  }
  double experts_per_layer(const LevelResult& l) const {
    return moe_layers
               ? double(l.decode.distinct_experts) / double(l.decode.decode_steps * moe_layers)
               : 0.0;
  }
  Derived derive(const LevelResult& l) const {
    Derived d{};
    d.tokens_per_s = double(l.tokens) / l.seconds;
    d.decode_tokens_per_s = double(l.decode.decode_rows) / l.decode.decode_seconds;
    d.bound = l.rows_per_step() * bandwidth() / l.bytes_per_step();
    d.share = d.tokens_per_s / d.bound;
    d.bound_speedup = d.bound / single_bound();
    if (const std::optional<double> one = one_client()) d.speedup = d.tokens_per_s / *one;
    return d;
  }
};

void print_json(const Measured& m, const BenchServeCommand& c) {
  nlohmann::json rows = nlohmann::json::array();
  for (const LevelResult& l : m.levels) {
    const Derived d = m.derive(l);
    const double steps = double(l.decode.decode_steps);
    rows.push_back({{"clients", l.clients},
                    {"requests", l.requests},
                    {"output_tokens", l.tokens},
                    {"seconds", l.seconds},
                    {"tokens_per_s", d.tokens_per_s},
                    {"speedup_over_one_client",
                     d.speedup ? nlohmann::json(*d.speedup) : nlohmann::json(nullptr)},
                    {"time_per_token_p50_ms", percentile(l.gaps_ms, 0.50)},
                    {"time_per_token_p99_ms", percentile(l.gaps_ms, 0.99)},
                    {"first_token_p50_ms", percentile(l.first_token_ms, 0.50)},
                    {"decode_steps", l.decode.decode_steps},
                    {"decode_rows", l.decode.decode_rows},
                    {"rows_per_step", l.rows_per_step()},
                    {"distinct_experts_per_layer", m.experts_per_layer(l)},
                    {"weight_bytes_per_step", double(l.decode.decode_weight_bytes) / steps},
                    {"kv_bytes_per_step", double(l.decode.decode_kv_bytes) / steps},
                    {"decode_tokens_per_s", d.decode_tokens_per_s},
                    {"bound_tokens_per_s", d.bound},
                    {"share_of_bound", d.share},
                    {"bound_speedup_over_one_token", d.bound_speedup}});
  }
  const nlohmann::json j = {
      {"model", m.model},
      {"dtype", m.dtype},
      {"threads", thread_count()},
      {"blas_core", blas_core_name()},
      {"prompt_tokens", c.prompt},
      {"gen_tokens", c.tokens},
      {"requests_per_client", c.requests_per_client},
      {"prefill_chunk", c.prefill_chunk},
      {"num_experts", m.num_experts},
      {"top_k", m.top_k},
      {"moe_layers", m.moe_layers},
      {"read_bandwidth_gbs", m.bandwidth() / 1e9},
      {"read_bandwidth_probes_gbs", {m.bandwidth_before / 1e9, m.bandwidth_after / 1e9}},
      {"single_token_bytes", m.one_token_bytes},
      {"single_token_bound_tokens_per_s", m.single_bound()},
      {"rows", rows},
      {"system", system_info()}};
  std::printf("%s\n", j.dump(2).c_str());
}

void print_table(const Measured& m, const BenchServeCommand& c) {
  std::printf(
      "model %s, %s weights, %d threads; %lld-token prompts, %lld output tokens each, %lld "
      "timed requests per client\n",
      m.model.c_str(), m.dtype.c_str(), thread_count(), static_cast<long long>(c.prompt),
      static_cast<long long>(c.tokens), static_cast<long long>(c.requests_per_client));
  std::printf(
      "read bandwidth %.1f GB/s (larger of %.1f and %.1f); one token's step reads %.1f MB: "
      "bound %.1f tokens/s\n",
      m.bandwidth() / 1e9, m.bandwidth_before / 1e9, m.bandwidth_after / 1e9,
      m.one_token_bytes / 1e6, m.single_bound());
  std::printf("%7s %9s %6s %8s %8s %6s %9s %13s %8s %10s %8s %8s\n", "clients", "tokens/s", "x1",
              "p50 ms", "p99 ms", "steps", "rows/step", "experts/layer", "MB/step", "bound t/s",
              "bound x1", "of bound");
  for (const LevelResult& l : m.levels) {
    const Derived d = m.derive(l);
    char speedup[32] = "-";
    if (d.speedup) std::snprintf(speedup, sizeof speedup, "%.2f", *d.speedup);
    std::printf("%7lld %9.1f %6s %8.1f %8.1f %6lld %9.2f %13.2f %8.1f %10.1f %8.2f %7.0f%%\n",
                static_cast<long long>(l.clients), d.tokens_per_s, speedup,
                percentile(l.gaps_ms, 0.50), percentile(l.gaps_ms, 0.99),
                static_cast<long long>(l.decode.decode_steps), l.rows_per_step(),
                m.experts_per_layer(l), l.bytes_per_step() / 1e6, d.bound, d.bound_speedup,
                100.0 * d.share);
  }
}

}  // namespace

CLI::App* add_bench_serve_command(CLI::App& bench, BenchServeCommand& c) {
  CLI::App* cmd = bench.add_subcommand(
      "serve",
      "Concurrent clients through moe serve's batching: tokens/s against each step's bytes");
  cmd->add_option("-m,--model", c.model,
                  "A run folder, a Hugging Face checkpoint folder (mixtral, qwen2_moe, olmoe) or a "
                  "GGUF file (llama, qwen2moe, olmoe), run as stored")
      ->check(CLI::ExistingPath);
  cmd->add_option("--random", c.random, "Model built in memory: mixtral-d1024 or mixtral-d512")
      ->capture_default_str()
      ->check(CLI::IsMember({"mixtral-d1024", "mixtral-d512"}));
  cmd->add_option("--dtype", c.dtype,
                  "--random's matrices: f32, bf16, or ggml's q8_0, q4_0 or q4_k blocks "
                  "(default bf16)")
      ->check(CLI::IsMember({"f32", "bf16", "q8_0", "q4_0", "q4_k"}));
  cmd->add_option("--clients", c.clients,
                  "Concurrent clients, one measurement each (each on as many slots)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{256}));
  cmd->add_option("--n-prompt", c.prompt, "Prompt tokens of each request (random ids)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--n-gen", c.tokens,
                  "Output tokens of each request, all of them (temperature 0, no stop token)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{4096}));
  cmd->add_option("--requests-per-client", c.requests_per_client,
                  "Timed requests each client submits in turn, after one warm-up request")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  cmd->add_option("--prefill-chunk", c.prefill_chunk,
                  "Prompt tokens prefilled per step, as moe serve's option")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_flag("--json", c.json, "Print one JSON object with a row per client count");
  return cmd;
}

int run_bench_serve(const BenchServeCommand& c) {
  require(!c.clients.empty(), "--clients: at least one count");
  const int64_t most = *std::max_element(c.clients.begin(), c.clients.end());
  BenchModel model = open_bench_model(c, most);
  InferenceModel& engine = model.engine();
  const ModelConfig& config = engine.config();
  warn_about_blas_kernel();  // once the model is open: a bad folder's error stays one line

  Measured m;
  m.model = model.name;
  m.dtype = model.dtype;
  m.num_experts = config.moe ? config.moe->num_experts : 0;
  m.top_k = config.moe ? config.moe->top_k : 0;
  // The bandwidth is probed before and after all the levels; the larger reading counts.
  m.bandwidth_before = measure_read_bandwidth();
  m.one_token_bytes = single_token_bytes(engine, c);
  for (int64_t clients : c.clients) m.levels.push_back(run_level(engine, c, clients));
  m.bandwidth_after = measure_read_bandwidth();
  m.moe_layers = int64_t(m.levels.front().decode.moe_layers.size());
  if (c.json)
    print_json(m, c);
  else
    print_table(m, c);
  return 0;
}

}  // namespace moe::cli
