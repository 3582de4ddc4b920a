#include "train/trainer.h"

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/hf_checkpoint.h"
#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "nn/optimizer.h"
#include "run/checkpoint.h"
#include "tensor/error.h"
#include "tensor/progress.h"
#include "text/token_cache.h"
#include "text/tokenizer.h"
#include "train/metrics_log.h"
#include "train/training_run.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

std::string default_corpus() {
  if (fs::exists("data/corpus.jsonl.gz")) return "data/corpus.jsonl.gz";
  return MOE_SOURCE_DIR "/data/corpus.jsonl.gz";
}

// The run folder's tokenizer must match the model's vocabulary.
void check_tokenizer(const Tokenizer& tokenizer, const std::string& path,
                     const ModelConfig& config) {
  if (tokenizer.vocab_size() != config.vocab_size)
    throw Error("tokenizer '" + path + "' has " + std::to_string(tokenizer.vocab_size()) +
                " pieces but the model config's vocab_size is " +
                std::to_string(config.vocab_size));
}

// Said once every check has passed, so that it never stands before an unrelated error.
void warn_if_warmup_too_long(const TrainOptions& o) {
  if (o.warmup < o.steps) return;
  std::fprintf(stderr,
               "warning: the warm-up (%lld steps) is not shorter than the run (%lld steps): "
               "the learning rate never reaches --lr and never decays\n",
               static_cast<long long>(o.warmup), static_cast<long long>(o.steps));
}

// The training loop over an opened run folder (`folder` on the root, null elsewhere; `dir` on
// every process), from `state` (a checkpoint) or from a fresh initialisation, on the token
// files in `tokens_dir`. `stepped` turns true after the first optimizer step.
TrainResult run_steps(const TrainOptions& o, const ModelConfig& config, RunFolder* folder,
                      const std::string& dir, const std::string& tokens_dir,
                      const nlohmann::json* state, bool& stepped, const Parallelism& parallel) {
  TrainingRun run(o, config, folder, dir, tokens_dir, parallel);
  run.start(state);
  int64_t step = run.start_step();
  while (step < o.steps) {
    const StepFigures figures = run.take_step(step);
    ++step;
    stepped = true;

    const bool log = step % o.log_every == 0 || step == o.steps;
    const bool report = config.moe && (step % o.monitor_every == 0 || step == o.steps);
    const bool eval = step % o.eval_every == 0 || step == o.steps;
    nlohmann::json line;  // this step's metrics line; null when it logs nothing
    if (log || report || eval) line = run.show_progress(step, figures, report || eval);
    if (report) run.report_experts(step, line);
    if (eval) run.validate(line);
    run.write_metrics(line);

    const int signal = run.signal_to_stop(figures);
    if (step % o.save_every == 0 || step == o.steps || signal != 0) run.checkpoint(step);
    if (signal != 0) {
      run.stop_on_signal(step, signal);
      break;
    }
  }
  return run.finish(step);
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
