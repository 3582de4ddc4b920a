#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/param_count.h"
#include "model/transformer.h"
#include "moe/load_metrics.h"
#include "tensor/error.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/optimizer.h"
#include "train/tokenizer.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) {
  g_stop.store(true);
}

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

// Appends lines to metrics.jsonl, flushed at once so a killed run keeps what it logged.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : out_(path, std::ios::app) {
    if (!out_) throw Error("cannot open '" + path + "' for appending");
  }
  void write(const nlohmann::json& j) { out_ << j.dump() << '\n' << std::flush; }

 private:
  std::ofstream out_;
};

// Drops metrics lines after `step` (a resumed run rewrites what followed its checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {  // a line torn by a kill
    }
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

// The run folder's tokenizer and token files: built once, from the corpus, and reused on
// resume (a resumed run that lacks them is an error, not a silent rebuild).
void prepare_run_data(const std::string& corpus, const std::string& dir, const ModelConfig& config,
                      bool resume) {
  const std::string tok_path = dir + "/tokenizer.model";
  const std::string data_dir = dir + "/data";
  const bool need_tokenizer = !fs::exists(tok_path);
  const bool need_tokens =
      !fs::exists(data_dir + "/train.tokens") || !fs::exists(data_dir + "/valid.tokens");
  if (resume && (need_tokenizer || need_tokens))
    throw Error("run '" + dir + "' lacks its tokenizer or token files");
  std::vector<Document> docs;
  if (need_tokenizer || need_tokens) {
    std::fprintf(stderr, "reading corpus %s\n", corpus.c_str());
    docs = read_corpus(corpus);
  }
  if (need_tokenizer) {
    std::vector<std::string> texts;
    for (const Document& d : docs)
      if (d.split == "train") texts.push_back(d.text);
    std::fprintf(stderr, "training a %lld-piece BPE tokenizer on %zu documents...\n",
                 static_cast<long long>(config.vocab_size), texts.size());
    const auto t0 = std::chrono::steady_clock::now();
    TokenizerTrainOptions topt;
    topt.vocab_size = static_cast<int>(config.vocab_size);
    topt.threads = omp_get_max_threads();
    Tokenizer::train(texts, topt, tok_path);
    std::fprintf(stderr, "  done in %.1f s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const Tokenizer tokenizer(tok_path);
  if (tokenizer.vocab_size() != config.vocab_size)
    throw Error("tokenizer '" + tok_path + "' has " + std::to_string(tokenizer.vocab_size()) +
                " pieces but the model config's vocab_size is " +
                std::to_string(config.vocab_size));
  if (need_tokens) {
    fs::create_directories(data_dir);
    build_token_files(docs, tokenizer, data_dir);
  }
}

// Expert loads accumulated between monitor reports, per layer: printed as bars with Gini,
// entropy and drop rate, with a warning for each expert over 3x or under a tenth of the mean
// load, and logged in full. Saved in checkpoints, so a resumed run reports the same windows
// as one never stopped.
class ExpertMonitor {
 public:
  explicit ExpertMonitor(int64_t layers) : loads_(layers), dropped_(layers), assigned_(layers) {}

  void restore(const nlohmann::json& saved, const std::string& dir) {
    const size_t layers = loads_.size();
    loads_ = saved.at("loads").get<std::vector<std::vector<int64_t>>>();
    dropped_ = saved.at("dropped").get<std::vector<int64_t>>();
    assigned_ = saved.at("assigned").get<std::vector<int64_t>>();
    if (loads_.size() != layers || dropped_.size() != layers || assigned_.size() != layers)
      throw Error(dir + "/trainer_state.json: 'monitor' does not match the model's layers");
  }
  nlohmann::json to_json() const {
    return {{"loads", loads_}, {"dropped", dropped_}, {"assigned", assigned_}};
  }

  // Adds the routing of the model's last forward.
  void add(const Transformer& model) {
    for (int64_t l = 0; l < model.num_layers(); ++l)
      if (const MoeLayer* m = model.moe_layer(l)) {
        const RoutingStats& rs = m->stats();
        if (loads_[l].empty()) loads_[l].assign(rs.tokens_per_expert.size(), 0);
        for (size_t e = 0; e < rs.tokens_per_expert.size(); ++e)
          loads_[l][e] += rs.tokens_per_expert[e];
        dropped_[l] += rs.dropped;
        assigned_[l] += rs.assignments;
      }
  }

  // Prints the window's report, returns it for metrics.jsonl and starts a new window.
  nlohmann::json report(const Transformer& model) {
    nlohmann::json layers = nlohmann::json::array();
    for (int64_t l = 0; l < model.num_layers(); ++l) {
      if (!model.moe_layer(l)) continue;
      const LoadMetrics lm = load_metrics(loads_[l]);
      const double drop_rate = assigned_[l] ? double(dropped_[l]) / double(assigned_[l]) : 0.0;
      layers.push_back({{"layer", l},
                        {"counts", loads_[l]},
                        {"gini", lm.gini},
                        {"entropy", lm.normalized_entropy},
                        {"cv", lm.cv},
                        {"max_over_mean", lm.max_over_mean},
                        {"drop_rate", drop_rate}});
      std::fprintf(stderr, "  layer %2lld experts |%s|  gini %.3f  entropy %.3f  drop %.1f%%\n",
                   static_cast<long long>(l), load_bars(loads_[l]).c_str(), lm.gini,
                   lm.normalized_entropy, 100.0 * drop_rate);
      for (int64_t e : lm.overloaded)
        std::fprintf(stderr, "  warning: layer %lld expert %lld has over 3x the mean load\n",
                     static_cast<long long>(l), static_cast<long long>(e));
      for (int64_t e : lm.starved)
        std::fprintf(stderr,
                     "  warning: layer %lld expert %lld gets under a tenth of the mean load "
                     "(collapse)\n",
                     static_cast<long long>(l), static_cast<long long>(e));
      std::fill(loads_[l].begin(), loads_[l].end(), 0);
      dropped_[l] = assigned_[l] = 0;
    }
    return layers;
  }

 private:
  std::vector<std::vector<int64_t>> loads_;  // [layer][expert]; empty for dense layers
  std::vector<int64_t> dropped_, assigned_;  // [layer]
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
          {"seed", o.seed}};
}

TrainOptions train_options_from_json(const nlohmann::json& j) {
  TrainOptions o;
  try {
    o.config = j.at("config");
    o.corpus = j.at("corpus");
    o.steps = j.at("steps");
    o.batch_size = j.at("batch_size");
    o.seq_len = j.at("seq_len");
    o.grad_accum = j.at("grad_accum");
    o.lr = j.at("lr");
    o.min_lr = j.at("min_lr");
    o.warmup = j.at("warmup");
    o.weight_decay = j.at("weight_decay");
    o.beta2 = j.at("beta2");
    o.grad_clip = j.at("grad_clip");
    o.eval_every = j.at("eval_every");
    o.eval_batches = j.at("eval_batches");
    o.save_every = j.at("save_every");
    o.monitor_every = j.at("monitor_every");
    o.log_every = j.at("log_every");
    o.seed = j.at("seed");
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("trainer_state.json: bad 'options': ") + e.what());
  }
  return o;
}

TrainResult train(TrainOptions o, bool resume, int64_t resume_steps) {
  const std::string dir = o.out_dir;
  nlohmann::json state;
  if (resume) {
    state = recover_checkpoint(dir);
    const std::string out = o.out_dir;
    const bool quiet = o.quiet;
    o = train_options_from_json(state.at("options"));
    o.out_dir = out;
    o.quiet = quiet;
    if (resume_steps > 0) o.steps = resume_steps;
  }
  require(o.steps > 0 && o.batch_size > 0 && o.seq_len > 1 && o.grad_accum > 0,
          "train: steps, batch size, sequence length and accumulation must be positive");
  require(o.warmup >= 0 && o.lr > 0 && o.min_lr >= 0, "train: bad learning-rate schedule");
  require(o.eval_every > 0 && o.save_every > 0 && o.monitor_every > 0 && o.log_every > 0,
          "train: --eval-every, --save-every, --monitor-every and --log-every must be positive");
  if (o.corpus.empty()) o.corpus = default_corpus();
  fs::create_directories(dir);

  // Model config: the run folder's when resuming, else the given file or the default.
  ModelConfig config = resume              ? load_model_config(dir + "/config.json")
                       : !o.config.empty() ? load_model_config(o.config)
                                           : default_model_config();
  if (o.seq_len > config.max_position_embeddings)
    throw Error("--seq-len " + std::to_string(o.seq_len) + " exceeds the model's " +
                "max_position_embeddings " + std::to_string(config.max_position_embeddings));

  const std::string data_dir = dir + "/data";
  prepare_run_data(o.corpus, dir, config, resume);
  const TokenStream train_tokens(data_dir + "/train.tokens");
  const TokenStream valid_tokens(data_dir + "/valid.tokens");

  ParamStore store;
  Transformer model(config, store, o.seed);
  store.allocate();
  AdamWOptions aopt;
  aopt.weight_decay = o.weight_decay;
  aopt.beta2 = o.beta2;
  AdamW optimizer(store, aopt);
  Rng data_rng = Rng::for_purpose(o.seed, kDataPurpose);
  int64_t start_step = 0;
  if (resume) {
    start_step = state.at("step");
    load_checkpoint(dir, start_step, model, store, optimizer);
    rng_from_json(data_rng, state.at("data_rng"));
    const auto& noise = state.at("noise_rngs");
    for (int64_t l = 0; l < model.num_layers(); ++l)
      if (MoeLayer* m = model.moe_layer(l)) rng_from_json(m->noise_rng(), noise.at(l));
    truncate_metrics(dir + "/metrics.jsonl", start_step);
  } else {
    Rng init = Rng::for_purpose(o.seed, kInitPurpose);
    model.init_parameters(init);
    std::ofstream(dir + "/metrics.jsonl", std::ios::trunc);
  }
  MetricsLog metrics(dir + "/metrics.jsonl");

  const ParamCount count = count_params(arch_from_model_config(config, "run"));
  const int64_t tokens_per_step = o.batch_size * o.seq_len * o.grad_accum;
  std::fprintf(
      stderr,
      "model: %.2fM parameters, %.2fM active per token, %lld MoE of %lld blocks; "
      "%lld training tokens, %lld validation tokens; %lld tokens per step\n",
      double(count.total) / 1e6, double(count.active) / 1e6,
      static_cast<long long>(config.num_moe_layers()),
      static_cast<long long>(config.num_hidden_layers), static_cast<long long>(train_tokens.size()),
      static_cast<long long>(valid_tokens.size()), static_cast<long long>(tokens_per_step));
  if (start_step >= o.steps) {
    std::fprintf(stderr, "run '%s' is already at step %lld of %lld\n", dir.c_str(),
                 static_cast<long long>(start_step), static_cast<long long>(o.steps));
  }

  g_stop.store(false);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  struct RestoreSignals {
    struct sigaction i, t;
    ~RestoreSignals() {
      sigaction(SIGINT, &i, nullptr);
      sigaction(SIGTERM, &t, nullptr);
    }
  } restore{old_int, old_term};

  const int64_t B = o.batch_size, S = o.seq_len;
  std::vector<int32_t> tokens(B * S), targets(B * S);
  const bool tty = !o.quiet && ::isatty(STDERR_FILENO);

  ExpertMonitor monitor(model.num_layers());
  if (resume && state.contains("monitor")) monitor.restore(state["monitor"], dir);

  auto evaluate = [&]() {
    const int64_t windows = eval_windows(valid_tokens, S);
    const int64_t batches = std::min(o.eval_batches, windows / B);
    if (batches == 0) return std::numeric_limits<double>::quiet_NaN();
    ModelStepOptions eval;
    eval.training = false;
    eval.compute_grad = false;
    double total = 0;
    for (int64_t b = 0; b < batches; ++b) {
      eval_batch(valid_tokens, b * B, B, S, tokens, targets);
      total += model.forward(tokens, targets, B, S, eval);
    }
    return total / double(batches);
  };
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
    save_checkpoint(dir, model, store, optimizer, st);
  };

  TrainResult result;
  result.val_loss = std::numeric_limits<double>::quiet_NaN();
  auto t_start = std::chrono::steady_clock::now();
  auto t_window = t_start;
  int64_t window_steps = 0;
  double window_loss = 0;
  int64_t step = start_step;
  while (step < o.steps) {
    store.zero_grads();
    double loss = 0, router = 0;
    ModelStepOptions opt;
    opt.grad_scale = 1.0f / static_cast<float>(o.grad_accum);
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      sample_batch(train_tokens, data_rng, B, S, tokens, targets);
      try {
        loss += model.forward(tokens, targets, B, S, opt) / double(o.grad_accum);
      } catch (const Error& e) {  // non-finite activations: the run has diverged
        throw Error(std::string(e.what()) + " at step " + std::to_string(step + 1) +
                    "; training stopped (the last checkpoint in '" + dir + "' is kept)");
      }
      router += model.router_loss() / double(o.grad_accum);
      model.backward();
      monitor.add(model);
    }
    if (!std::isfinite(loss) || !std::isfinite(router))
      throw Error("loss is " + std::to_string(loss) + " at step " + std::to_string(step + 1) +
                  "; training stopped (the last checkpoint in '" + dir + "' is kept)");
    const double grad_norm = clip_grad_norm(store, o.grad_clip);
    if (!std::isfinite(grad_norm))
      throw Error("gradient norm is not finite at step " + std::to_string(step + 1) +
                  "; training stopped (the last checkpoint in '" + dir + "' is kept)");
    const float lr = learning_rate(step, o.steps, o.warmup, o.lr, o.min_lr);
    optimizer.step(lr);
    model.update_expert_bias();
    ++step;
    ++window_steps;
    window_loss += loss;
    result.final_loss = loss;

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
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      const double eta = elapsed / double(step - start_step) * double(o.steps - step);
      char bar[41];
      const int filled = static_cast<int>(40.0 * double(step) / double(o.steps));
      for (int i = 0; i < 40; ++i) bar[i] = i < filled ? '#' : '.';
      bar[40] = '\0';
      if (!o.quiet)
        std::fprintf(stderr, "%s[%s] step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s%s",
                     tty ? "\r" : "", bar, static_cast<long long>(step),
                     static_cast<long long>(o.steps), window_loss / double(window_steps), lr, tok_s,
                     format_duration(eta).c_str(), tty ? "\033[K" : "\n");
      if (tty && (report || eval)) std::fputc('\n', stderr);
      t_window = std::chrono::steady_clock::now();
      window_steps = 0;
      window_loss = 0;
    }
    if (report) line["experts"] = monitor.report(model);
    if (eval) {
      result.val_loss = evaluate();
      line["val_loss"] = result.val_loss;
      std::fprintf(stderr, "  validation loss %.4f (perplexity %.1f)\n", result.val_loss,
                   std::exp(result.val_loss));
    }
    if (!line.is_null()) metrics.write(line);
    const bool stop = g_stop.load();
    if (step % o.save_every == 0 || step == o.steps || stop) checkpoint(step);
    if (stop) {
      std::fprintf(stderr,
                   "\ninterrupted: saved step %lld to '%s'; continue with "
                   "moe train --resume %s\n",
                   static_cast<long long>(step), dir.c_str(), dir.c_str());
      result.interrupted = true;
      break;
    }
  }
  if (tty) std::fputc('\n', stderr);
  result.steps_done = step;
  return result;
}

}  // namespace moe
