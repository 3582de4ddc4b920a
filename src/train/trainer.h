#pragma once
// Trainer: the training loop of `moe train`. One run folder holds everything a run needs to
// continue (train/checkpoint.h) plus metrics.jsonl, one JSON object per line, every line with
// "step" and "loss" (and "val_loss" where evaluated, "experts" where monitored).
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

#include "model/config.h"
#include "moe/expert_exchange.h"
#include "tensor/collectives.h"
#include "train/run_folder.h"

namespace moe {

struct TrainOptions {
  std::string out_dir = "runs/default";
  std::string config;  // model config file; empty = the built-in default (configs/default.json)
  std::string corpus;  // empty = data/corpus.jsonl.gz of this source tree
  // The default run: the sparsity study's schedule (docs/STUDY.md) at 1,500 steps of 4,096
  // tokens, about 5 minutes on 2 cores for the default model.
  int64_t steps = 1500;
  int64_t batch_size = 32;
  int64_t seq_len = 128;
  int64_t grad_accum = 1;
  float lr = 6e-3f;
  float min_lr = 6e-4f;  // a tenth of the peak
  int64_t warmup = 75;   // 5% of the steps; moe train's default is default_warmup(steps)
  float weight_decay = 0.1f;
  float beta2 = 0.95f;
  float grad_clip = 1.0f;
  int64_t eval_every = 150;
  // Validation batches per evaluation, windows spread over the split: 16 x 32 x 128 tokens are
  // moe eval's default --max-tokens, so the run's last validation loss is moe eval's.
  int64_t eval_batches = 16;
  int64_t save_every = 150;
  int64_t monitor_every = 50;
  int64_t log_every = 10;
  uint64_t seed = 1234;
  int64_t vocab_size = 0;  // 0 = the model config's; else overrides it (a fresh run's tokenizer)
  bool quiet = false;      // no progress bar
  // Keep every --save-every checkpoint's model in checkpoints/step-NNNNNN/ (train/checkpoint.h).
  bool keep_checkpoints = false;
  // Where a fresh run finds or puts its tokenizer and tokens (train/token_cache.h); "" = no
  // cache, everything built in the run folder. copy_data: the run folder also holds a copy
  // of the token files. Neither is a run option: not saved, not compared on resume.
  std::string cache_dir;
  bool copy_data = false;
};

// Checks every option's range (Error naming the option). Touches no file.
void validate_train_options(const TrainOptions& o);

// moe train's warm-up when --warmup is not given: 75 steps, or a tenth of a shorter run, so
// that it stays well inside it. 75 measured better than 5% of the steps: a 900-step run of the
// default config ends at validation loss 3.652 with 75, 3.762 with 45.
int64_t default_warmup(int64_t steps);

nlohmann::json train_options_to_json(const TrainOptions& o);
TrainOptions train_options_from_json(const nlohmann::json& j);

// "[####....] step 120/400  train loss 4.1234  lr 2.95e-03  5120 tok/s  ETA 1m02s" in at most
// width - 1 columns (a line filling the last column wraps on some terminals): when it is too
// wide the bar shrinks, then tok/s, lr and the ETA go, then the bar. Plain text, no control
// codes.
std::string format_progress_line(int64_t step, int64_t steps, double loss, float lr, double tok_s,
                                 double eta_s, int width);

// What --resume may change; each change is printed with its effect on the schedule.
struct ResumeChanges {
  std::optional<int64_t> steps;  // a new end (not below the checkpoint's step)
  std::optional<float> lr;       // a new peak learning rate
  bool quiet = false;
};

// A MoE layer that drops more than this share of its token assignments over a monitor window
// gets a warning.
inline constexpr double kDropWarningRate = 0.01;

struct TrainResult {
  std::string dir;  // the run folder
  int64_t steps_done = 0;
  int64_t total_steps = 0;
  double train_loss = 0;          // mean training loss over the last progress window
  double val_loss = 0;            // the last validation loss; NaN when never evaluated
  bool already_finished = false;  // a resumed run with no step left to do
  int stopped_by_signal = 0;      // SIGINT / SIGTERM: saved and stopped early
  std::shared_ptr<RunLock> lock;  // the folder's lock, for the caller's reads after training
                                  // (null on ranks other than the root)
};

// A run spread over P processes (expert parallelism): each takes 1/P of every batch (the same
// global batch, --batch-size, as one process) and holds 1/P of every MoE layer's experts; the
// root (rank 0) alone writes the run folder, which must be the same folder for every process
// (a shared file system across machines). Default: one process, nothing shared.
struct Parallelism {
  Collectives* comm = nullptr;  // null or size 1: this process alone
  // Given E, the per-layer exchange factory (throws Error when P does not divide E).
  std::function<ExpertExchangeFactory(int64_t experts)> exchange;
};

// Throws OutOfMemory, before anything is allocated or written, when training `config` at
// the options' batch and sequence length needs more memory than this process may use
// (model/memory_estimate.h, tensor/memory_available.h); names the largest batch that fits.
void check_training_memory(const ModelConfig& config, const TrainOptions& options,
                           int processes = 1, bool resume = false);

// A fresh run into options.out_dir; `force` replaces a run there (at the new run's first
// checkpoint). Throws Error on bad input (leaving no folder behind when no step was taken)
// and on a non-finite loss (the last checkpoint stays); Interrupted (train/progress.h) when
// SIGINT / SIGTERM came before the first step (no folder left either).
TrainResult train(const TrainOptions& options, bool force = false,
                  const Parallelism& parallel = {});

// Continues the run in `dir` exactly where its last checkpoint left it.
// Under any P that divides E (the checkpoint holds the whole model).
TrainResult resume_training(const std::string& dir, const ResumeChanges& changes,
                            const Parallelism& parallel = {});

}  // namespace moe
