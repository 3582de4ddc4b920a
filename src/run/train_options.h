#pragma once
// The options a run is trained with, as `moe train` takes them and trainer_state.json keeps
// them: read back by --resume (to compare), by `moe eval` (the run's sequence length) and by
// `moe params`'s defaults.
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

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
  // Keep every --save-every checkpoint's model in checkpoints/step-NNNNNN/ (run/checkpoint.h).
  bool keep_checkpoints = false;
  // Where a fresh run finds or puts its tokenizer and tokens (text/token_cache.h); "" = no
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
}  // namespace moe
