#pragma once
// Trainer: the training loop of `moe train` (each part of a step is in train/training_run.h).
// One run folder holds everything a run needs to continue (run/checkpoint.h) plus metrics.jsonl,
// one JSON object per line, every line with "step" and "loss" (and "val_loss" where evaluated,
// "experts" where monitored).
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

#include "model/config.h"
#include "run/run_folder.h"
#include "run/train_options.h"
#include "train/progress_line.h"  // the progress line the trainer prints
#include "train/ranks.h"          // Parallelism

namespace moe {

// What --resume may change; each change is printed with its effect on the schedule.
struct ResumeChanges {
  std::optional<int64_t> steps;  // a new end (not below the checkpoint's step)
  std::optional<float> lr;       // a new peak learning rate
  bool quiet = false;
};

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

// Throws OutOfMemory, before anything is allocated or written, when training `config` at
// the options' batch and sequence length needs more memory than this process may use
// (model/memory_estimate.h, tensor/memory_available.h); names the largest batch that fits.
void check_training_memory(const ModelConfig& config, const TrainOptions& options,
                           int processes = 1, bool resume = false);

// A fresh run into options.out_dir; `force` replaces a run there (at the new run's first
// checkpoint). Throws Error on bad input (leaving no folder behind when no step was taken)
// and on a non-finite loss (the last checkpoint stays); Interrupted (tensor/progress.h) when
// SIGINT / SIGTERM came before the first step (no folder left either).
TrainResult train(const TrainOptions& options, bool force = false,
                  const Parallelism& parallel = {});

// Continues the run in `dir` exactly where its last checkpoint left it.
// Under any P that divides E (the checkpoint holds the whole model).
TrainResult resume_training(const std::string& dir, const ResumeChanges& changes,
                            const Parallelism& parallel = {});

}  // namespace moe
