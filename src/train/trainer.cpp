#include "train/trainer.h"

#include <omp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/hf_checkpoint.h"
#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "model/transformer.h"
#include "moe/load_metrics.h"
#include "tensor/atomic_file.h"
#include "tensor/blas_info.h"
#include "tensor/error.h"
#include "tensor/json_field.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/expert_shards.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/token_cache.h"
#include "train/tokenizer.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kInitPurpose = 1, kDataPurpose = 2;

std::string default_corpus() {
  if (fs::exists("data/corpus.jsonl.gz")) return "data/corpus.jsonl.gz";
  return MOE_SOURCE_DIR "/data/corpus.jsonl.gz";
}

nlohmann::json rng_to_json(const Rng& r) {
  return r.state();
}
void rng_from_json(Rng& r, const nlohmann::json& j) {
  r.set_state(j.get<std::array<uint64_t, 4>>());
}

std::string format_duration(double seconds) {
  char buf[32];
  const int s = static_cast<int>(std::max(0.0, seconds));
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", s / 3600, s / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
  return buf;
}

// Appends lines to metrics.jsonl, flushed at once so a killed run keeps what it logged. A line
// torn by a kill is dropped on resume.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : out_(path, std::ios::app) {
    if (!out_) throw Error("cannot open '" + path + "' for appending");
  }
  void write(const nlohmann::json& j) {
    out_ << j.dump() << '\n' << std::flush;
    note_file_operation();
  }

 private:
  std::ofstream out_;
};

// The lines of metrics.jsonl up to `step` that parse; `dropped` tells whether any did not.
std::vector<nlohmann::json> read_metrics(const std::string& path, int64_t step, bool* dropped) {
  std::ifstream in(path);
  std::vector<nlohmann::json> kept;
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.value("step", int64_t{0}) <= step)
      kept.push_back(j);
    else if (dropped)
      *dropped = true;
  }
  return kept;
}

// Drops metrics lines after `step` (a resumed run rewrites what followed its checkpoint), in
// one atomic replacement: a kill leaves the old file or the new one.
void truncate_metrics(const std::string& path, int64_t step) {
  bool dropped = false;
  const std::vector<nlohmann::json> kept = read_metrics(path, step, &dropped);
  if (!dropped) return;
  std::string text;
  for (const auto& j : kept) text += j.dump() + "\n";
  write_file_atomic(path, text);
}

// The last validation loss logged at or before `step`; NaN when none.
double last_logged_val_loss(const std::string& dir, int64_t step) {
  double val = std::numeric_limits<double>::quiet_NaN();
  for (const auto& j : read_metrics(dir + "/metrics.jsonl", step, nullptr))
    if (j.contains("val_loss") && j["val_loss"].is_number()) val = j["val_loss"];
  return val;
}

int terminal_width() {
  struct winsize ws {};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// The run folder's tokenizer must match the model's vocabulary.
void check_tokenizer(const Tokenizer& tokenizer, const std::string& path,
                     const ModelConfig& config) {
  if (tokenizer.vocab_size() != config.vocab_size)
    throw Error("tokenizer '" + path + "' has " + std::to_string(tokenizer.vocab_size()) +
                " pieces but the model config's vocab_size is " +
                std::to_string(config.vocab_size));
}

// Expert loads accumulated between monitor reports, per layer: printed as bars with Gini,
// entropy and drop rate, with a warning for each expert over 3x or under a tenth of the mean
// load and for a drop rate over kDropWarningRate, and logged in full. Saved in checkpoints, so
// a resumed run reports the same windows as one never stopped.
class ExpertMonitor {
 public:
  explicit ExpertMonitor(int64_t layers)
      : loads_(layers), dropped_(layers), assigned_(layers), tokens_(layers), unrouted_(layers) {}

  // `step`: the checkpoint's; the window then began after the last report (states saved
  // before "first_step" was kept began their windows at a multiple of monitor_every).
  void restore(const nlohmann::json& saved, const std::string& dir, int64_t step,
               int64_t monitor_every) {
    const size_t layers = loads_.size();
    loads_ = saved.at("loads").get<std::vector<std::vector<int64_t>>>();
    dropped_ = saved.at("dropped").get<std::vector<int64_t>>();
    assigned_ = saved.at("assigned").get<std::vector<int64_t>>();
    // Token and unrouted counts came later: an older state starts them at zero.
    tokens_ = saved.value("tokens", std::vector<int64_t>(layers, 0));
    unrouted_ = saved.value("unrouted", std::vector<int64_t>(layers, 0));
    if (loads_.size() != layers || dropped_.size() != layers || assigned_.size() != layers ||
        tokens_.size() != layers || unrouted_.size() != layers)
      throw Error(dir + "/trainer_state.json: 'monitor' does not match the model's layers");
    first_step_ = saved.value("first_step", step / monitor_every * monitor_every + 1);
  }
  nlohmann::json to_json() const {
    return {{"loads", loads_},   {"dropped", dropped_},   {"assigned", assigned_},
            {"tokens", tokens_}, {"unrouted", unrouted_}, {"first_step", first_step_}};
  }
  int64_t first_step() const { return first_step_; }

  // Adds the routing of the model's last forward; with `comm`, of every process's forward.
  void add(const Transformer& model, Collectives* comm) {
    counts_.clear();  // per MoE layer: E loads, dropped, assignments, tokens, unrouted
    for (int64_t l = 0; l < model.num_layers(); ++l)
      if (const MoeLayer* m = model.moe_layer(l)) {
        const RoutingStats& rs = m->stats();
        counts_.insert(counts_.end(), rs.tokens_per_expert.begin(), rs.tokens_per_expert.end());
        counts_.insert(counts_.end(), {rs.dropped, rs.assignments, rs.tokens, rs.unrouted_tokens});
      }
    if (comm) comm->sum(counts_);
    auto next = counts_.begin();
    for (int64_t l = 0; l < model.num_layers(); ++l)
      if (const MoeLayer* m = model.moe_layer(l)) {
        const size_t E = m->stats().tokens_per_expert.size();
        if (loads_[l].empty()) loads_[l].assign(E, 0);
        for (size_t e = 0; e < E; ++e) loads_[l][e] += *next++;
        dropped_[l] += *next++;
        assigned_[l] += *next++;
        tokens_[l] += *next++;
        unrouted_[l] += *next++;
      }
  }

  // Prints the report of the window that ends at `step`, returns it for metrics.jsonl and
  // starts a new window.
  nlohmann::json report(const Transformer& model, int64_t step) {
    std::fprintf(stderr, "  expert load over steps %lld-%lld:\n",
                 static_cast<long long>(first_step_), static_cast<long long>(step));
    nlohmann::json layers = nlohmann::json::array();
    for (int64_t l = 0; l < model.num_layers(); ++l) {
      if (!model.moe_layer(l)) continue;
      const LoadMetrics lm = load_metrics(loads_[l]);
      const double drop_rate = assigned_[l] ? double(dropped_[l]) / double(assigned_[l]) : 0.0;
      const double tokens = std::max<double>(1.0, double(tokens_[l]));
      const double per_token = double(assigned_[l] - dropped_[l]) / tokens;
      const double unrouted = double(unrouted_[l]) / tokens;
      layers.push_back({{"layer", l},
                        {"counts", loads_[l]},
                        {"gini", lm.gini},
                        {"entropy", lm.normalized_entropy},
                        {"cv", lm.cv},
                        {"max_over_mean", lm.max_over_mean},
                        {"drop_rate", drop_rate},
                        {"experts_per_token", per_token},
                        {"unrouted_share", unrouted}});
      std::fprintf(stderr, "  layer %2lld experts |%s|  gini %.3f  entropy %.3f  drop %.1f%%",
                   static_cast<long long>(l), load_bars(loads_[l]).c_str(), lm.gini,
                   lm.normalized_entropy, 100.0 * drop_rate);
      // Expert choice gives each token a variable number of experts, possibly none.
      if (model.moe_layer(l)->config().router_type == RouterType::ExpertChoice)
        std::fprintf(stderr, "  experts/token %.2f  unrouted %.1f%%", per_token, 100.0 * unrouted);
      std::fprintf(stderr, "\n");
      for (int64_t e : lm.overloaded)
        std::fprintf(stderr, "  warning: layer %lld expert %lld has over 3x the mean load\n",
                     static_cast<long long>(l), static_cast<long long>(e));
      for (int64_t e : lm.starved)
        std::fprintf(stderr,
                     "  warning: layer %lld expert %lld gets under a tenth of the mean load "
                     "(collapse)\n",
                     static_cast<long long>(l), static_cast<long long>(e));
      if (drop_rate > kDropWarningRate)
        std::fprintf(stderr,
                     "  warning: layer %lld dropped %.1f%% of its token assignments over steps "
                     "%lld-%lld (over %.0f%%): raise capacity_factor, or set it to 0 (dropless)\n",
                     static_cast<long long>(l), 100.0 * drop_rate,
                     static_cast<long long>(first_step_), static_cast<long long>(step),
                     100.0 * kDropWarningRate);
      std::fill(loads_[l].begin(), loads_[l].end(), 0);
      dropped_[l] = assigned_[l] = tokens_[l] = unrouted_[l] = 0;
    }
    first_step_ = step + 1;
    return layers;
  }

 private:
  std::vector<std::vector<int64_t>> loads_;  // [layer][expert]; empty for dense layers
  std::vector<int64_t> dropped_, assigned_;  // [layer]
  std::vector<int64_t> tokens_, unrouted_;   // [layer] tokens routed; tokens no expert took
  int64_t first_step_ = 1;                   // the window's first step
  std::vector<int64_t> counts_;              // add()'s scratch
};

}  // namespace

nlohmann::json train_options_to_json(const TrainOptions& o) {
  return {{"config", o.config},
          {"corpus", o.corpus},
          {"steps", o.steps},
          {"batch_size", o.batch_size},
          {"seq_len", o.seq_len},
          {"grad_accum", o.grad_accum},
          {"lr", o.lr},
          {"min_lr", o.min_lr},
          {"warmup", o.warmup},
          {"weight_decay", o.weight_decay},
          {"beta2", o.beta2},
          {"grad_clip", o.grad_clip},
          {"eval_every", o.eval_every},
          {"eval_batches", o.eval_batches},
          {"save_every", o.save_every},
          {"monitor_every", o.monitor_every},
          {"log_every", o.log_every},
          {"seed", o.seed},
          {"keep_checkpoints", o.keep_checkpoints}};
}

TrainOptions train_options_from_json(const nlohmann::json& j) {
  // The file is untrusted: every number is read through the typed readers (finite, fits its
  // type) and the whole set is validated where it is used.
  constexpr const char* kWhat = "trainer_state.json options";
  TrainOptions o;
  try {
    auto integer = [&](const char* key) { return json_int(j.at(key), kWhat, key); };
    auto real = [&](const char* key) { return json_float(j.at(key), kWhat, key); };
    o.config = j.at("config").get<std::string>();
    o.corpus = j.at("corpus").get<std::string>();
    o.steps = integer("steps");
    o.batch_size = integer("batch_size");
    o.seq_len = integer("seq_len");
    o.grad_accum = integer("grad_accum");
    o.lr = real("lr");
    o.min_lr = real("min_lr");
    o.warmup = integer("warmup");
    o.weight_decay = real("weight_decay");
    o.beta2 = real("beta2");
    o.grad_clip = real("grad_clip");
    o.eval_every = integer("eval_every");
    o.eval_batches = integer("eval_batches");
    o.save_every = integer("save_every");
    o.monitor_every = integer("monitor_every");
    o.log_every = integer("log_every");
    const nlohmann::json& seed = j.at("seed");
    if (!seed.is_number_unsigned())
      throw Error(std::string(kWhat) + " field 'seed' must be a non-negative integer");
    o.seed = seed.get<uint64_t>();
    // Came later: a run saved before it kept no checkpoints.
    o.keep_checkpoints = j.value("keep_checkpoints", false);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("trainer_state.json: bad 'options': ") + json_error_text(e));
  }
  return o;
}

std::string format_progress_line(int64_t step, int64_t steps, double loss, float lr, double tok_s,
                                 double eta_s, int width) {
  char buf[4][64];
  std::snprintf(buf[0], sizeof buf[0], "step %lld/%lld", static_cast<long long>(step),
                static_cast<long long>(steps));
  std::snprintf(buf[1], sizeof buf[1], "train loss %.4f", loss);
  std::snprintf(buf[2], sizeof buf[2], "lr %.2e", lr);
  std::snprintf(buf[3], sizeof buf[3], "%.0f tok/s", tok_s);
  std::string fields[5] = {buf[0], buf[1], buf[2], buf[3], "ETA " + format_duration(eta_s)};
  auto joined = [&] {
    std::string line;
    for (const std::string& f : fields)
      if (!f.empty()) line.append(line.empty() ? "" : "  ").append(f);
    return line;
  };
  const size_t limit = static_cast<size_t>(std::max(width - 1, 20));
  for (int dropped : {3, 2, 4})  // tok/s, then lr, then the ETA
    if (joined().size() > limit) fields[dropped].clear();
  std::string line = joined();
  const int64_t room = static_cast<int64_t>(limit) - static_cast<int64_t>(line.size()) - 3;
  if (room >= 8) {
    const int64_t bar = std::min<int64_t>(40, room);
    const int64_t filled = bar * step / std::max<int64_t>(steps, 1);
    std::string with_bar = "[";
    with_bar.append(filled, '#').append(bar - filled, '.').append("] ").append(line);
    line = std::move(with_bar);
  }
  if (line.size() > limit) line.resize(limit);
  return line;
}

namespace {

// 0.006, 1e-05, -1: a float option as a person writes it (std::to_string gives -1.000000).
std::string real_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

}  // namespace

void validate_train_options(const TrainOptions& o) {
  auto positive = [](int64_t value, const char* option) {
    if (value <= 0)
      throw Error(std::string(option) + " must be positive, got " + std::to_string(value));
  };
  positive(o.steps, "--steps");
  positive(o.batch_size, "--batch-size");
  positive(o.grad_accum, "--grad-accum");
  positive(o.eval_every, "--eval-every");
  positive(o.eval_batches, "--eval-batches");
  positive(o.save_every, "--save-every");
  positive(o.monitor_every, "--monitor-every");
  positive(o.log_every, "--log-every");
  // Upper bounds keep every product of sizes (tokens per step, step counts) far from overflow.
  auto at_most = [](int64_t value, int64_t limit, const char* option) {
    if (value > limit)
      throw Error(std::string(option) + " must be at most " + std::to_string(limit) + ", got " +
                  std::to_string(value));
  };
  constexpr int64_t kMaxSize = int64_t{1} << 20, kMaxSteps = int64_t{1} << 40;
  for (const auto& [value, option] : {std::pair{o.steps, "--steps"},
                                      {o.warmup, "--warmup"},
                                      {o.eval_every, "--eval-every"},
                                      {o.save_every, "--save-every"},
                                      {o.monitor_every, "--monitor-every"},
                                      {o.log_every, "--log-every"}})
    at_most(value, kMaxSteps, option);
  for (const auto& [value, option] : {std::pair{o.batch_size, "--batch-size"},
                                      {o.seq_len, "--seq-len"},
                                      {o.grad_accum, "--grad-accum"},
                                      {o.eval_batches, "--eval-batches"}})
    at_most(value, kMaxSize, option);
  if (o.seq_len < 2) throw Error("--seq-len must be at least 2, got " + std::to_string(o.seq_len));
  if (o.warmup < 0) throw Error("--warmup must not be negative, got " + std::to_string(o.warmup));
  if (!(std::isfinite(o.lr) && o.lr > 0))
    throw Error("--lr must be a positive number, got " + real_text(o.lr));
  if (!(std::isfinite(o.min_lr) && o.min_lr >= 0 && o.min_lr <= o.lr))
    throw Error("--min-lr must lie in [0, --lr " + real_text(o.lr) + "], got " +
                real_text(o.min_lr));
  if (!(std::isfinite(o.weight_decay) && o.weight_decay >= 0))
    throw Error("--weight-decay must not be negative, got " + real_text(o.weight_decay));
  if (!(o.beta2 > 0 && o.beta2 < 1))
    throw Error("beta2 must lie in (0, 1), got " + real_text(o.beta2));
  if (!(std::isfinite(o.grad_clip) && o.grad_clip >= 0))
    throw Error("--grad-clip must not be negative (0 = off), got " + real_text(o.grad_clip));
  if (o.vocab_size != 0 && (o.vocab_size < 256 || o.vocab_size > 65536))
    throw Error("--vocab-size must lie in [256, 65536], got " + std::to_string(o.vocab_size));
}

int64_t default_warmup(int64_t steps) {
  return std::min<int64_t>(75, steps / 10);
}

namespace {

// Said once every check has passed, so that it never stands before an unrelated error.
void warn_if_warmup_too_long(const TrainOptions& o) {
  if (o.warmup < o.steps) return;
  std::fprintf(stderr,
               "warning: the warm-up (%lld steps) is not shorter than the run (%lld steps): "
               "the learning rate never reaches --lr and never decays\n",
               static_cast<long long>(o.warmup), static_cast<long long>(o.steps));
}

}  // namespace

namespace {

// The processes of a run: this one alone, or P of them with expert parallelism.
struct Ranks {
  explicit Ranks(const Parallelism& p)
      : comm(p.comm && p.comm->size() > 1 ? p.comm : nullptr),
        rank(comm ? comm->rank() : 0),
        size(comm ? comm->size() : 1) {}
  Collectives* comm;  // null: one process
  int rank, size;
  bool root() const { return rank == 0; }
};

// Runs `work` on the root only; an Error there reaches every process (each throws it as a
// SharedError), so no process waits for a root that gave up.
template <typename Work>
void on_root(const Ranks& ranks, Work&& work) {
  if (!ranks.comm) return work();
  std::string error;
  if (ranks.root()) try {
      work();
    } catch (const Error& e) {
      error = e.what();
    }
  ranks.comm->broadcast(error);
  if (!error.empty()) throw SharedError(error);
}

// An error every process meets alike (the same check on the same data): under P processes a
// SharedError, so all end normally with one message from the root.
[[noreturn]] void throw_alike(const Ranks& ranks, const Error& e) {
  if (ranks.comm) throw SharedError(e.what());
  throw e;
}

// Every process must train the same model with the same options (the same files and command
// line on every host): checked against the root's before anything runs.
void require_same_setup(const Ranks& ranks, const ModelConfig& config, const TrainOptions& o) {
  if (!ranks.comm) return;
  const std::string setup =
      model_config_to_json(config).dump() + "\n" + train_options_to_json(o).dump();
  const std::vector<int> differ = ranks_differing_from_root(*ranks.comm, setup);
  if (differ.empty()) return;
  std::string list;
  for (int r : differ) list += (list.empty() ? "" : ", ") + std::to_string(r);
  throw SharedError("rank " + list + " has another model config or other training options " +
                    "than rank 0 (each process reads its own files: they must be the same)");
}

// What expert parallelism supports, checked before anything runs.
void check_parallel_layout(const Ranks& ranks, const ModelConfig& config, const TrainOptions& o) {
  if (!ranks.comm) return;
  const std::string P = std::to_string(ranks.size);
  if (o.batch_size % ranks.size != 0)
    throw Error("--batch-size " + std::to_string(o.batch_size) + " is not a multiple of the " + P +
                " ranks (each takes an equal share of every batch)");
  if (!config.moe) return;
  const MoeConfig& m = *config.moe;
  if (m.num_experts % ranks.size != 0)
    throw Error("--expert-parallel " + P + " does not divide num_experts " +
                std::to_string(m.num_experts) + " (each rank holds E/P experts)");
}

// The training loop over an opened run folder (`folder` on the root, null elsewhere; `dir` on
// every process), from `state` (a checkpoint) or from a fresh initialisation, on the token
// files in `tokens_dir`. `stepped` turns true after the first optimizer step.
TrainResult run_steps(const TrainOptions& o, const ModelConfig& config, RunFolder* folder,
                      const std::string& dir, const std::string& tokens_dir,
                      const nlohmann::json* state, bool& stepped, const Parallelism& parallel) {
  const Ranks ranks(parallel);
  Collectives* const comm = ranks.comm;
  const bool root = ranks.root();
  const bool resume = state != nullptr;
  // A --force run's folder moves into place at its first checkpoint (the root's RunFolder
  // tracks it); the files opened here stay open across the move.
  auto current_dir = [&] { return folder ? folder->dir() : dir; };
  const TokenStream train_tokens(tokens_dir + "/train.tokens");
  const TokenStream valid_tokens(tokens_dir + "/valid.tokens");

  ParamStore store;
  Transformer model(
      config, store, o.seed,
      comm && config.moe ? parallel.exchange(config.moe->num_experts) : ExpertExchangeFactory{});
  store.allocate();
  AdamWOptions aopt;
  aopt.weight_decay = o.weight_decay;
  aopt.beta2 = o.beta2;
  AdamW optimizer(store, aopt);
  const ParamSplit split = split_params(model, store);
  std::vector<float> grad_scratch;
  Rng data_rng = Rng::for_purpose(o.seed, kDataPurpose);
  ExpertMonitor monitor(model.num_layers());
  int64_t start_step = 0;
  TrainResult result;
  result.val_loss = std::numeric_limits<double>::quiet_NaN();
  result.train_loss = std::numeric_limits<double>::quiet_NaN();
  const std::string metrics_path = dir + "/metrics.jsonl";
  if (resume) {
    const nlohmann::json& st = *state;
    start_step = st.at("step");
    if (comm) {  // every process reads the whole checkpoint and keeps its part
      FullModel full(config, o.seed, aopt);
      load_checkpoint(dir, start_step, *full.model, full.store, *full.optimizer);
      copy_from_full(full, model, store, optimizer, ranks.rank, ranks.size);
    } else {
      load_checkpoint(dir, start_step, model, store, optimizer);
    }
    rng_from_json(data_rng, st.at("data_rng"));
    const auto& noise = st.at("noise_rngs");
    for (int64_t l = 0; l < model.num_layers(); ++l)
      if (MoeLayer* m = model.moe_layer(l)) rng_from_json(m->noise_rng(), noise.at(l));
    if (st.contains("monitor")) monitor.restore(st["monitor"], dir, start_step, o.monitor_every);
    if (st.contains("val_loss") && st["val_loss"].is_number()) result.val_loss = st["val_loss"];
    if (root) truncate_metrics(metrics_path, start_step);
  } else {
    Rng init = Rng::for_purpose(o.seed, kInitPurpose);
    if (comm) {  // the whole model initialised as one process does, then each keeps its part
      FullModel full(config, o.seed, aopt);
      full.model->init_parameters(init);
      copy_from_full(full, model, store, optimizer, ranks.rank, ranks.size);
    } else {
      model.init_parameters(init);
    }
    if (root) write_file_atomic(metrics_path, "");
  }
  std::optional<MetricsLog> metrics;
  if (root) metrics.emplace(metrics_path);

  const ParamCount count = count_params(arch_from_model_config(config, "run"));
  const int64_t tokens_per_step = o.batch_size * o.seq_len * o.grad_accum;
  if (root)
    std::fprintf(stderr,
                 "model: %.2fM parameters, %.2fM active per token, %lld MoE of %lld blocks; "
                 "%lld training tokens, %lld validation tokens; %lld tokens per step\n",
                 double(count.total) / 1e6, double(count.active) / 1e6,
                 static_cast<long long>(config.num_moe_layers()),
                 static_cast<long long>(config.num_hidden_layers),
                 static_cast<long long>(train_tokens.size()),
                 static_cast<long long>(valid_tokens.size()),
                 static_cast<long long>(tokens_per_step));
  if (root && comm)
    std::fprintf(stderr,
                 "expert parallelism: %d ranks, %lld experts per MoE layer on each, %lld "
                 "sequences of every batch on each\n",
                 ranks.size,
                 static_cast<long long>(config.moe ? config.moe->num_experts / ranks.size : 0),
                 static_cast<long long>(o.batch_size / ranks.size));
  if (root) warn_about_blas_kernel();

  // B: this process's sequences of every batch of o.batch_size (all of them in one process).
  const int64_t B = o.batch_size / ranks.size, S = o.seq_len;
  std::vector<int32_t> tokens(o.batch_size * S), targets(o.batch_size * S);
  const std::span<const int32_t> my_tokens = std::span(tokens).subspan(ranks.rank * B * S, B * S);
  const std::span<const int32_t> my_targets = std::span(targets).subspan(ranks.rank * B * S, B * S);
  // Carriage returns and erase-line codes only on a terminal; elsewhere, plain lines.
  const bool tty = root && !o.quiet && ::isatty(STDERR_FILENO);
  const int width = tty ? terminal_width() : 80;

  // Validation in eval mode: causal routing (what generation computes), or for expert choice
  // with `batch_selection` the selection across the batch that training uses. `routed` gets
  // the experts per token and the share of tokens no expert took, over all MoE layers.
  auto evaluate = [&](bool batch_selection, std::pair<double, double>* routed) {
    const int64_t windows = eval_windows(valid_tokens, S);
    const int64_t batches = std::min(o.eval_batches, windows / o.batch_size);
    if (batches == 0) return std::numeric_limits<double>::quiet_NaN();
    ModelStepOptions eval;
    eval.training = false;
    eval.compute_grad = false;
    eval.batch_selection_in_eval = batch_selection;
    double total = 0, tokens_routed = 0, kept = 0, unrouted = 0;
    for (int64_t b = 0; b < batches; ++b) {
      eval_batch(valid_tokens, b * o.batch_size, o.batch_size, batches * o.batch_size, S, tokens,
                 targets);
      total += model.forward(my_tokens, my_targets, B, S, eval);
      for (int64_t l = 0; l < model.num_layers(); ++l)
        if (const MoeLayer* m = model.moe_layer(l)) {
          const RoutingStats& rs = m->stats();
          tokens_routed += double(rs.tokens);
          kept += double(rs.assignments - rs.dropped);
          unrouted += double(rs.unrouted_tokens);
        }
    }
    if (comm) {  // each process's mean over its equal share: the mean of the means
      double sums[] = {total, tokens_routed, kept, unrouted};
      comm->sum(sums);
      total = sums[0] / ranks.size;
      tokens_routed = sums[1];
      kept = sums[2];
      unrouted = sums[3];
    }
    if (routed && tokens_routed > 0) *routed = {kept / tokens_routed, unrouted / tokens_routed};
    return total / double(batches);
  };
  const bool expert_choice = config.moe && config.moe->router_type == RouterType::ExpertChoice;
  if (config.moe && root) {
    const MoeConfig& m = *config.moe;
    if (expert_choice || (m.capacity_factor > 0 && m.drop_policy == DropPolicy::Probs))
      std::fprintf(stderr,
                   "note: in training, %s, so later tokens of a batch can change how earlier ones "
                   "are routed (as in Switch and GShard); validation and generation route "
                   "causally\n",
                   expert_choice ? "expert choice selects each expert's tokens across the batch"
                                 : "capacity_factor drops the lowest gates across the batch");
    else if (m.capacity_factor > 0)
      std::fprintf(stderr,
                   "note: in training, capacity_factor drops by position: earlier sequences of "
                   "a batch fill an expert first; validation and generation route dropless\n");
    if (m.eval_capacity_factor && *m.eval_capacity_factor > 0)
      std::fprintf(stderr,
                   "warning: eval_capacity_factor %g: the validation loss uses batch-dependent "
                   "routing that generation does not reproduce\n",
                   *m.eval_capacity_factor);
  }
  bool saved = resume;  // the folder holds a checkpoint of this run
  auto checkpoint = [&](int64_t step) {
    nlohmann::json st = {{"step", step},
                         {"options", train_options_to_json(o)},
                         {"data_rng", rng_to_json(data_rng)},
                         {"tokens_seen", step * tokens_per_step}};
    nlohmann::json noise = nlohmann::json::array();
    for (int64_t l = 0; l < model.num_layers(); ++l)
      noise.push_back(model.moe_layer(l) ? rng_to_json(model.moe_layer(l)->noise_rng())
                                         : nlohmann::json(nullptr));
    st["noise_rngs"] = noise;
    st["monitor"] = monitor.to_json();
    if (std::isfinite(result.val_loss)) st["val_loss"] = result.val_loss;
    // Kept checkpoints (--keep-checkpoints) are written before the step's own checkpoint
    // commits, so a kill and resume never leaves a kept step missing.
    const bool keep = o.keep_checkpoints && (step % o.save_every == 0 || step == o.steps);
    if (comm) {
      // Every process's data position and streams are the root's (one data stream, the same
      // draws everywhere), so the root's state serves any number of processes on resume.
      st["expert_parallel"] = ranks.size;
      std::unique_ptr<FullModel> full;
      if (root) full = std::make_unique<FullModel>(config, o.seed, aopt);
      gather_to_full(*comm, model, store, optimizer, full.get());
      if (root && keep) keep_checkpoint(current_dir(), step, *full->model, full->store);
      if (root) save_checkpoint(current_dir(), *full->model, full->store, *full->optimizer, st);
    } else {
      if (keep) keep_checkpoint(current_dir(), step, model, store);
      save_checkpoint(current_dir(), model, store, optimizer, st);
    }
    if (root) folder->checkpoint_saved();
    saved = true;
  };
  auto stopped_error = [&](const std::string& what, int64_t step) {
    return Error(what + " at step " + std::to_string(step) + "; training stopped (" +
                 (saved ? "the last checkpoint in '" + current_dir() + "' is kept"
                        : std::string("no checkpoint was saved yet")) +
                 ")");
  };

  auto t_start = std::chrono::steady_clock::now();
  auto t_window = t_start;
  int64_t window_steps = 0;
  CommStats window_comm = comm ? comm->stats() : CommStats{};  // at the window's start
  double window_loss = 0;
  int64_t step = start_step;
  while (step < o.steps) {
    store.zero_grads();
    double loss = 0, router = 0;
    ModelStepOptions opt;
    // Under P processes each gradient is 1/P of its batch share's: the sum over processes is
    // then the whole batch's mean, with no scaling after the sum.
    opt.grad_scale = 1.0f / static_cast<float>(o.grad_accum * ranks.size);
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      // Every process draws the whole batch (the same draws) and takes its share.
      sample_batch(train_tokens, data_rng, o.batch_size, S, tokens, targets);
      try {
        loss += model.forward(my_tokens, my_targets, B, S, opt) / double(o.grad_accum);
      } catch (const Error& e) {  // non-finite activations: the run has diverged
        throw stopped_error(e.what(), step + 1);
      }
      router += model.router_loss() / double(o.grad_accum);
      model.backward();
      monitor.add(model, comm);
    }
    int agreed_signal = 0;
    if (comm) {
      // The losses are means over equal shares; a signal on any process stops them all (at
      // the same step, so that they save together).
      const int mine = stop_signal();
      double sums[] = {loss, router, double(mine != 0), double(mine)};
      comm->sum(sums);
      loss = sums[0] / ranks.size;
      router = sums[1] / ranks.size;
      agreed_signal = sums[2] > 0 ? static_cast<int>(sums[3] / sums[2]) : 0;
      sum_replicated_grads(*comm, store, split, grad_scratch);
    }
    if (!std::isfinite(loss) || !std::isfinite(router))
      throw_alike(ranks, stopped_error("loss is " + std::to_string(loss), step + 1));
    const double grad_norm = comm ? clip_grad_norm_across(*comm, store, split, o.grad_clip)
                                  : clip_grad_norm(store, o.grad_clip);
    if (!std::isfinite(grad_norm))
      throw_alike(ranks, stopped_error("gradient norm is not finite", step + 1));
    const float lr = learning_rate(step, o.steps, o.warmup, o.lr, o.min_lr);
    optimizer.step(lr);
    model.update_expert_bias();
    ++step;
    stepped = true;
    ++window_steps;
    window_loss += loss;

    nlohmann::json line;
    const bool log = step % o.log_every == 0 || step == o.steps;
    const bool report = config.moe && (step % o.monitor_every == 0 || step == o.steps);
    const bool eval = step % o.eval_every == 0 || step == o.steps;
    if (log || report || eval) {
      const double now_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_window).count();
      const double tok_s = double(window_steps * tokens_per_step) / std::max(now_s, 1e-9);
      line = {{"step", step},
              {"loss", loss},
              {"lr", lr},
              {"tokens_per_s", tok_s},
              {"grad_norm", grad_norm},
              {"router_loss", router},
              {"tokens", step * tokens_per_step}};
      if (comm) {
        // The root's communication per step over the window: bytes it sent to other ranks,
        // seconds in the token exchange (all-to-all) and in the other collectives.
        const CommStats& now = comm->stats();
        const double n = double(window_steps);
        line["comm_bytes_per_step"] = double(now.bytes_sent - window_comm.bytes_sent) / n;
        line["exchange_s_per_step"] = (now.exchange_seconds - window_comm.exchange_seconds) / n;
        line["reduce_s_per_step"] = (now.reduce_seconds - window_comm.reduce_seconds) / n;
        window_comm = now;
      }
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      const double eta = elapsed / double(step - start_step) * double(o.steps - step);
      result.train_loss = window_loss / double(window_steps);
      if (root && !o.quiet) {
        const std::string text =
            format_progress_line(step, o.steps, result.train_loss, lr, tok_s, eta, width);
        if (tty)
          std::fprintf(stderr, "\r%s\033[K%s", text.c_str(), report || eval ? "\n" : "");
        else
          std::fprintf(stderr, "%s\n", text.c_str());
      }
      t_window = std::chrono::steady_clock::now();
      window_steps = 0;
      window_loss = 0;
    }
    if (report && root) {  // the monitor holds every process's counts
      line["experts_steps"] = {monitor.first_step(), step};
      line["experts"] = monitor.report(model, step);
    }
    if (eval) {
      std::pair<double, double> routed{0, 0};
      result.val_loss = evaluate(false, &routed);
      line["val_loss"] = result.val_loss;
      if (root)
        std::fprintf(stderr, "  validation loss %.4f (perplexity %.1f)", result.val_loss,
                     std::exp(result.val_loss));
      if (expert_choice) {
        // Both ways: by the learned thresholds (causal, what generation does; the figure every
        // summary uses) and as trained (each expert's top-C of each capacity group).
        const double as_trained = evaluate(true, nullptr);
        line["val_loss_batch_selection"] = as_trained;
        line["val_experts_per_token"] = routed.first;
        line["val_unrouted_share"] = routed.second;
        if (root)
          std::fprintf(stderr,
                       " by thresholds (%.2f experts per token, %.1f%% of tokens unrouted); "
                       "%.4f as trained (batch selection)",
                       routed.first, 100.0 * routed.second, as_trained);
      }
      if (root) std::fprintf(stderr, "\n");
    }
    if (!line.is_null() && root) metrics->write(line);
    const int signal = comm ? agreed_signal : stop_signal();
    if (step % o.save_every == 0 || step == o.steps || signal != 0) checkpoint(step);
    if (signal != 0) {
      if (root)
        std::fprintf(stderr,
                     "%sinterrupted: saved step %lld to '%s'; continue with "
                     "moe train --resume %s\n",
                     tty ? "\n" : "", static_cast<long long>(step), current_dir().c_str(),
                     current_dir().c_str());
      result.stopped_by_signal = signal;
      break;
    }
  }
  if (tty) std::fputc('\n', stderr);
  result.dir = current_dir();
  result.steps_done = step;
  result.total_steps = o.steps;
  if (root) result.lock = folder->lock();
  return result;
}

std::string format_lr(double lr) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", lr);
  return buf;
}

// Applies --steps and --lr to a resumed run's options, printing each change and what it does
// to the learning rate of the next step.
void apply_resume_changes(TrainOptions& o, const ResumeChanges& changes, int64_t step,
                          const std::string& dir, bool print) {
  const TrainOptions before = o;
  if (changes.steps) {
    if (*changes.steps < step)
      throw Error("--steps " + std::to_string(*changes.steps) +
                  " is below the step of the run in '" + dir + "' (" + std::to_string(step) +
                  "); a resumed run can only end at or after its checkpoint");
    o.steps = *changes.steps;
    if (print)
      std::fprintf(stderr,
                   "resume: --steps %lld applied: the run now ends at step %lld (was %lld)\n",
                   static_cast<long long>(o.steps), static_cast<long long>(o.steps),
                   static_cast<long long>(before.steps));
  }
  if (changes.lr) {
    if (!(std::isfinite(*changes.lr) && *changes.lr >= o.min_lr))
      throw Error("--lr " + format_lr(*changes.lr) + " must be at least the run's --min-lr " +
                  format_lr(o.min_lr));
    o.lr = *changes.lr;
    if (print)
      std::fprintf(stderr, "resume: --lr %s applied: peak learning rate %s (was %s)\n",
                   format_lr(o.lr).c_str(), format_lr(o.lr).c_str(), format_lr(before.lr).c_str());
  }
  if (print && (changes.steps || changes.lr) && step < o.steps) {
    const float was = learning_rate(step, before.steps, before.warmup, before.lr, before.min_lr);
    const float now = learning_rate(step, o.steps, o.warmup, o.lr, o.min_lr);
    std::fprintf(stderr,
                 "resume: learning-rate schedule: warm-up %lld steps, then cosine from %s down "
                 "to %s at step %lld; step %lld now uses %s (was %s)\n",
                 static_cast<long long>(o.warmup), format_lr(o.lr).c_str(),
                 format_lr(o.min_lr).c_str(), static_cast<long long>(o.steps),
                 static_cast<long long>(step + 1), format_lr(now).c_str(), format_lr(was).c_str());
  }
}

}  // namespace

namespace {

// The largest batch whose estimate fits in `available` (0 when none does).
int64_t largest_fitting_batch(const ModelConfig& config, TrainingShape shape,
                              const AvailableMemory& available) {
  int64_t lo = 0, hi = shape.batch;  // fits(lo), !fits(hi)
  while (hi - lo > shape.processes) {
    int64_t mid = lo + (hi - lo) / 2;
    mid -= mid % shape.processes;  // a multiple of the processes, as --batch-size must be
    if (mid <= lo) break;
    shape.batch = mid;
    (memory_fits(estimate_training_memory(config, shape), available) ? lo : hi) = mid;
  }
  return lo;
}

}  // namespace

void check_training_memory(const ModelConfig& config, const TrainOptions& o, int processes,
                           bool resume) {
  TrainingShape shape;
  shape.batch = o.batch_size;
  shape.seq = o.seq_len;
  shape.threads = omp_get_max_threads();
  shape.processes = processes;
  shape.resume = resume;
  const MemoryEstimate estimate = estimate_training_memory(config, shape);
  const AvailableMemory available = available_memory();
  if (memory_fits(estimate, available)) return;
  const int64_t fits = largest_fitting_batch(config, shape, available);
  const std::string advice =
      (fits > 0 ? "--batch-size " + std::to_string(fits) +
                      " fits (--grad-accum keeps the tokens per step)"
                : std::string("even --batch-size ") + std::to_string(processes) +
                      " does not fit: try fewer --threads, a shorter --seq-len or a smaller "
                      "model") +
      "; `moe params --batch-size B --seq-len S` shows the estimate's parts";
  require_memory(estimate,
                 "training at --batch-size " + std::to_string(o.batch_size) + " x --seq-len " +
                     std::to_string(o.seq_len) + (processes > 1 ? " (per process)" : ""),
                 available, advice);
}

TrainResult train(const TrainOptions& options, bool force, const Parallelism& parallel) {
  const Ranks ranks(parallel);
  TrainOptions o = options;
  ModelConfig config;
  // Everything that can be checked without writing is checked first (by every process, alike):
  // a bad option or config leaves the file system as it was.
  try {
    validate_train_options(o);
    config = o.config.empty() ? default_model_config() : load_any_model_config(o.config);
    if (o.vocab_size != 0) {
      config.vocab_size = o.vocab_size;
      config.validate();
    }
    if (o.seq_len > config.max_position_embeddings)
      throw Error("--seq-len " + std::to_string(o.seq_len) + " exceeds the model's " +
                  "max_position_embeddings " + std::to_string(config.max_position_embeddings));
    if (o.corpus.empty()) o.corpus = default_corpus();
    if (!fs::is_regular_file(o.corpus) && !fs::is_directory(o.corpus))
      throw Error("corpus '" + o.corpus + "' is neither a file nor a folder");
    check_parallel_layout(ranks, config, o);
  } catch (const Error& e) {
    throw_alike(ranks, e);
  }
  require_same_setup(ranks, config, o);
  // Each process on its own machine: refused before the folder, the corpus or any tensor.
  check_training_memory(config, o, ranks.size, /*resume=*/false);
  const StopSignals stop_signals;  // Ctrl-C from here on stops the run cleanly

  // The root alone opens and fills the folder; the others learn where it is.
  std::optional<RunFolder> folder;
  std::string dir;
  on_root(ranks, [&] {
    folder.emplace(RunFolder::open_fresh(o.out_dir, force));
    dir = folder->dir();
  });
  if (ranks.comm) ranks.comm->broadcast(dir);
  bool stepped = false;
  try {
    std::string tokens_dir;
    on_root(ranks, [&] {
      RunDataRequest request;
      request.corpus = o.corpus;
      request.vocab_size = config.vocab_size;
      request.cache_dir = o.cache_dir;
      // Processes on other machines may not share the cache folder: they read the run's own.
      request.copy_data = o.copy_data || ranks.comm;
      request.quiet = o.quiet;
      tokens_dir = prepare_run_data(request, dir).tokens_dir;
      const std::string tok_path = dir + "/tokenizer.model";
      check_tokenizer(Tokenizer(tok_path), tok_path, config);
    });
    if (ranks.comm) ranks.comm->broadcast(tokens_dir);
    if (ranks.root()) warn_if_warmup_too_long(o);
    return run_steps(o, config, folder ? &*folder : nullptr, dir, tokens_dir, nullptr, stepped,
                     parallel);
  } catch (...) {
    if (!stepped && folder) {
      try {
        folder->discard();
      } catch (const std::exception&) {  // the first error is the one to report
      }
    }
    throw;
  }
}

TrainResult resume_training(const std::string& given, const ResumeChanges& changes,
                            const Parallelism& parallel) {
  const Ranks ranks(parallel);
  std::optional<RunFolder> folder;
  std::string dir;
  nlohmann::json state;
  on_root(ranks, [&] {
    folder.emplace(RunFolder::open_existing(given));
    dir = folder->dir();
    state = recover_checkpoint(dir);
  });
  if (ranks.comm) {  // the root's recovered state, for every process
    std::string text = ranks.root() ? state.dump() : std::string();
    ranks.comm->broadcast(dir);
    ranks.comm->broadcast(text);
    if (!ranks.root()) state = nlohmann::json::parse(text);
  }
  TrainOptions o;
  ModelConfig config;
  int64_t step = 0;
  try {
    o = train_options_from_json(state.at("options"));
    o.out_dir = dir;
    o.quiet = changes.quiet;
    step = state.at("step");
    apply_resume_changes(o, changes, step, dir, ranks.root());
    validate_train_options(o);
    if (step < o.steps) {
      config = load_model_config(dir + "/config.json");
      if (o.seq_len > config.max_position_embeddings)
        throw Error(dir + "/trainer_state.json: seq_len " + std::to_string(o.seq_len) +
                    " exceeds the model's max_position_embeddings " +
                    std::to_string(config.max_position_embeddings));
      const std::string tok_path = dir + "/tokenizer.model";
      if (!fs::exists(tok_path)) throw Error("run '" + dir + "' lacks '" + tok_path + "'");
      check_tokenizer(Tokenizer(tok_path), tok_path, config);
      check_parallel_layout(ranks, config, o);
    }
  } catch (const Error& e) {
    throw_alike(ranks, e);
  }
  if (step < o.steps) require_same_setup(ranks, config, o);
  if (step >= o.steps) {
    TrainResult result;
    result.dir = dir;
    result.already_finished = true;
    result.steps_done = result.total_steps = step;
    result.train_loss = std::numeric_limits<double>::quiet_NaN();
    result.val_loss = state.contains("val_loss") && state["val_loss"].is_number()
                          ? state["val_loss"].get<double>()
                          : last_logged_val_loss(dir, step);
    if (folder) result.lock = folder->lock();
    return result;
  }
  check_training_memory(config, o, ranks.size, /*resume=*/true);
  const StopSignals stop_signals;
  // The tokens: in the run folder, or in the cache (rebuilt there when the entry is gone).
  std::string tokens_dir;
  on_root(ranks, [&] { tokens_dir = run_tokens_dir(dir, /*rebuild=*/true, o.quiet); });
  if (ranks.comm) ranks.comm->broadcast(tokens_dir);
  bool stepped = false;
  if (ranks.root()) warn_if_warmup_too_long(o);
  return run_steps(o, config, folder ? &*folder : nullptr, dir, tokens_dir, &state, stepped,
                   parallel);
}

}  // namespace moe
