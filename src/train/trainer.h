#pragma once
// Trainer: the training loop of `moe train`. One run folder holds everything a run needs to
// continue (train/checkpoint.h) plus metrics.jsonl, one JSON object per line, every line with
// "step" and "loss" (and "val_loss" where evaluated, "experts" where monitored).
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace moe {

struct TrainOptions {
  std::string out_dir = "runs/default";
  std::string config;  // model config file; empty = the built-in default (configs/default.json)
  std::string corpus;  // empty = data/corpus.jsonl.gz of this source tree
  int64_t steps = 400;
  int64_t batch_size = 16;
  int64_t seq_len = 128;
  int64_t grad_accum = 1;
  float lr = 3e-3f;
  float min_lr = 3e-4f;
  int64_t warmup = 40;
  float weight_decay = 0.1f;
  float beta2 = 0.95f;
  float grad_clip = 1.0f;
  int64_t eval_every = 100;
  int64_t eval_batches = 16;  // validation batches per evaluation (fixed windows)
  int64_t save_every = 100;
  int64_t monitor_every = 50;
  int64_t log_every = 10;
  uint64_t seed = 1234;
  bool quiet = false;  // no progress bar
};

nlohmann::json train_options_to_json(const TrainOptions& o);
TrainOptions train_options_from_json(const nlohmann::json& j);

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;
  double val_loss = 0;  // NaN when never evaluated
  bool interrupted = false;
};

// Trains from scratch (or continues when `resume`; options then come from the run folder,
// and steps > 0 in `resume_steps` extends the run). Throws Error on bad input and on a
// non-finite loss (the last checkpoint stays).
TrainResult train(TrainOptions options, bool resume, int64_t resume_steps = 0);

}  // namespace moe
