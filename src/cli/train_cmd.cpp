#include "cli/train_cmd.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/generate_cmd.h"
#include "moe/load_metrics.h"
#include "tensor/error.h"
#include "tensor/json_field.h"
#include "tensor/progress.h"
#include "text/token_cache.h"

namespace moe::cli {

namespace {

// The step count, batch shape and optimizer options of moe train.
void add_optimization_options(CLI::App* train, TrainOptions& t) {
  train->add_option("--steps", t.steps, "Optimizer steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--batch-size", t.batch_size, "Sequences per micro-batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--seq-len", t.seq_len, "Tokens per sequence")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  train->add_option("--grad-accum", t.grad_accum, "Micro-batches per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--lr", t.lr, "Peak learning rate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--min-lr", t.min_lr, "Final learning rate")->capture_default_str();
  train->add_option("--warmup", t.warmup,
                    "Warm-up steps (default: 75, or a tenth of a run shorter than 750 steps)");
  train->add_option("--weight-decay", t.weight_decay, "AdamW decay")->capture_default_str();
  train->add_option("--grad-clip", t.grad_clip, "Global gradient-norm clip (0 = off)")
      ->capture_default_str();
}

// How often moe train validates, saves, reports expert loads and prints progress.
void add_interval_options(CLI::App* train, TrainOptions& t) {
  train->add_option("--eval-every", t.eval_every, "Steps between validations")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--eval-batches", t.eval_batches, "Validation batches")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--save-every", t.save_every, "Steps between checkpoints")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--monitor-every", t.monitor_every, "Steps between expert-load reports")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--log-every", t.log_every, "Steps between progress lines")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

}  // namespace

CLI::App* add_train_command(CLI::App& app, TrainCommand& c) {
  TrainOptions& t = c.options;
  CLI::App* train = app.add_subcommand(
      "train", "Train an MoE language model (the shipped corpus, or --corpus your own text)");
  train
      ->add_option("--config", t.config,
                   "Model config JSON: ours or a Hugging Face config.json (default: the built-in "
                   "default model, as configs/default.json)")
      ->check(CLI::ExistingFile);
  train->add_option("--out", t.out_dir, "Run folder (refused if it holds a run; see --force)")
      ->capture_default_str();
  train->add_flag("--force", c.force,
                  "Replace the run in --out; the old one stays until the new one's first "
                  "checkpoint");
  train
      ->add_option("--resume", c.resume,
                   "Continue the run in this folder exactly (--steps and --lr may change)")
      ->check(CLI::ExistingDirectory);
  add_optimization_options(train, t);
  add_interval_options(train, t);
  train
      ->add_option("--corpus", t.corpus,
                   "Training text: gzip JSONL (default data/corpus.jsonl.gz), a UTF-8 text file "
                   "(documents split on blank lines) or a folder with one subfolder per domain")
      ->check(CLI::ExistingPath);
  train
      ->add_option("--vocab-size", t.vocab_size,
                   "Tokenizer pieces (overrides the config's vocab_size)")
      ->check(CLI::Range(int64_t{256}, int64_t{65536}));
  train->add_option("--seed", t.seed, "Run seed")->capture_default_str();
  train->add_flag("--keep-checkpoints", t.keep_checkpoints,
                  "Also keep each --save-every checkpoint's model in checkpoints/step-NNNNNN/ "
                  "(moe eval's routing saturation reads them)");
  train
      ->add_option("--expert-parallel", c.expert_parallel,
                   "Processes the run spans, under mpirun -np P: each holds E/P experts of every "
                   "MoE layer and takes 1/P of every batch (--batch-size stays the global batch)")
      ->check(CLI::Range(1, 1 << 16));
  train->add_option("--cache-dir", c.cache_dir,
                    "Where tokenizers and tokenized corpora are kept and reused, keyed by the "
                    "corpus's and tokenizer's SHA-256 (default: $XDG_CACHE_HOME/moe, else "
                    "~/.cache/moe; \"\" for none: everything in the run folder)");
  train->add_flag("--copy-data", t.copy_data,
                  "Also copy the token files into the run folder (self-contained; otherwise "
                  "data/source.json names them in the cache)");
  train->add_flag("--quiet", t.quiet, "No progress bar");
  train->add_flag("--no-sample", c.no_sample, "Skip the sample generation at the end");
  c.app = train;
  return train;
}

namespace {

// --resume takes the run's own options; of the others, only --steps and --lr may change them.
ResumeChanges resume_changes(const TrainCommand& c) {
  ResumeChanges changes;
  changes.quiet = c.options.quiet;
  for (const CLI::Option* option : c.app->get_options()) {
    if (option->count() == 0) continue;
    const std::string name = option->get_name();
    if (name == "--resume" || name == "--quiet" || name == "--no-sample" ||
        name == "--expert-parallel")
      continue;
    if (name == "--steps")
      changes.steps = c.options.steps;
    else if (name == "--lr")
      changes.lr = c.options.lr;
    else if (name == "--cache-dir" || name == "--copy-data")
      throw Error(name +
                  " does not go with --resume: a resumed run reads the tokens its "
                  "data/source.json names (rebuilding them there when they are gone)");
    else if (name == "--out" || name == "--force")
      throw Error(name +
                  " does not go with --resume: --resume names the run folder and "
                  "continues the run there");
    else
      throw Error(name +
                  " cannot change on --resume: a resumed run keeps its options (only "
                  "--steps and --lr can change); start a new run with --out instead");
  }
  return changes;
}

}  // namespace

namespace {

// The processes of the run: --expert-parallel P must be the job's size, checked on every
// process alike before anything runs.
Parallelism parallelism(const TrainCommand& c) {
  const int world = c.world ? c.world->size() : 1;
  if (c.expert_parallel == 1 && world > 1)
    throw SharedError("mpirun started " + std::to_string(world) +
                      " processes: pass --expert-parallel " + std::to_string(world) +
                      " to spread the run over them");
  if (c.expert_parallel != world)
    throw SharedError("--expert-parallel " + std::to_string(c.expert_parallel) + " needs " +
                      std::to_string(c.expert_parallel) + " processes (mpirun -np " +
                      std::to_string(c.expert_parallel) + "), but this job has " +
                      std::to_string(world));
  Parallelism p;
  if (world > 1) {
    p.comm = c.world;
    p.exchange = [world = c.world](int64_t experts) { return world->expert_exchange(experts); };
  }
  return p;
}

// The default token cache folder, or "" (tokens in the run folder, with a warning) when it
// cannot be made: a read-only or missing home should not stop a run.
std::string usable_default_cache_dir() {
  const std::string dir = default_token_cache_dir();
  if (dir.empty()) return dir;
  std::filesystem::path existing = dir;
  while (!existing.empty() && !std::filesystem::exists(existing)) existing = existing.parent_path();
  if (!existing.empty() && ::access(existing.c_str(), W_OK) == 0) return dir;
  std::fprintf(stderr,
               "warning: cannot write the token cache '%s': the tokens go in the run folder "
               "(--cache-dir DIR to keep them elsewhere)\n",
               dir.c_str());
  return "";
}

}  // namespace

int run_train(TrainCommand c) {
  const Parallelism parallel = parallelism(c);
  ResumeChanges changes;
  if (!c.resume.empty()) try {
      changes = resume_changes(c);
    } catch (const Error& e) {  // every process has the same arguments
      if (c.world) throw SharedError(e.what());
      throw;
    }
  const bool cache_given = c.app && c.app->get_option("--cache-dir")->count() > 0;
  if (c.resume.empty())
    c.options.cache_dir = cache_given ? c.cache_dir : usable_default_cache_dir();
  if (c.resume.empty() && c.app && c.app->get_option("--warmup")->count() == 0)
    c.options.warmup = default_warmup(c.options.steps);
  TrainResult r;
  try {
    r = c.resume.empty() ? train(c.options, c.force, parallel)
                         : resume_training(c.resume, changes, parallel);
  } catch (const Interrupted& e) {  // before the first step: nothing to summarise
    std::fprintf(stderr, "%s\n", e.what());
    return 128 + e.signal;
  }
  if (c.world && c.world->rank() != 0) return r.stopped_by_signal ? 128 + r.stopped_by_signal : 0;
  const std::string& dir = r.dir;
  if (r.already_finished) {
    std::printf("run '%s' already finished at step %lld (", dir.c_str(),
                static_cast<long long>(r.steps_done));
    if (std::isnan(r.val_loss))
      std::printf("no validation loss recorded");
    else
      std::printf("validation loss %.4f", r.val_loss);
    std::printf("); pass --steps above %lld to train it further\n",
                static_cast<long long>(r.steps_done));
    return 0;
  }
  std::printf("run folder: %s (step %lld of %lld)\n", dir.c_str(),
              static_cast<long long>(r.steps_done), static_cast<long long>(r.total_steps));
  if (!std::isnan(r.train_loss))
    std::printf("training loss %.4f (mean over the last logged steps)\n", r.train_loss);
  if (!std::isnan(r.val_loss))
    std::printf("validation loss %.4f (perplexity %.1f)\n", r.val_loss, std::exp(r.val_loss));

  // Expert-load summary: the last monitored line of metrics.jsonl.
  std::ifstream metrics(dir + "/metrics.jsonl");
  std::string line, last_experts;
  while (std::getline(metrics, line))
    if (line.find("\"experts\"") != std::string::npos) last_experts = line;
  if (!last_experts.empty()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(last_experts);
    } catch (const nlohmann::json::exception& e) {
      throw Error(dir + "/metrics.jsonl: " + json_error_text(e));
    }
    if (j.contains("experts_steps"))
      std::printf("expert load over steps %lld-%lld (one bar per expert):\n",
                  j["experts_steps"].at(0).get<long long>(),
                  j["experts_steps"].at(1).get<long long>());
    else
      std::printf("expert load over the last monitor window (one bar per expert):\n");
    for (const auto& layer : j.at("experts")) {
      const auto counts = layer.at("counts").get<std::vector<int64_t>>();
      const LoadMetrics lm = load_metrics(counts);
      std::printf("  layer %2lld |%s|  gini %.3f  entropy %.3f  max/mean %.2f  drop %.1f%%\n",
                  layer.at("layer").get<long long>(), load_bars(counts).c_str(), lm.gini,
                  lm.normalized_entropy, lm.max_over_mean,
                  100.0 * layer.at("drop_rate").get<double>());
    }
  }
  if (r.stopped_by_signal != 0) return 128 + r.stopped_by_signal;
  if (!c.no_sample) {
    std::printf("sample (prompt \"NAME\\n       \", temperature 0.8):\n");
    SamplingOptions s;
    stream_generation(dir, "NAME\n       ", 120, s, 7);
  }
  return 0;
}

}  // namespace moe::cli
