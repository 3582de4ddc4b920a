#pragma once
// One run's training on this process: the model (with this rank's experts), AdamW, the data
// stream and its draws, the expert monitor, metrics.jsonl, the progress window and each part of
// a step, in the order trainer.cpp's loop (run_steps) calls them. Every process draws each batch
// whole, [batch_size, seq_len] token ids, and trains on its B = batch_size / P rows; the root
// alone prints and writes files.
#include <chrono>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/transformer.h"
#include "nn/optimizer.h"
#include "run/run_folder.h"
#include "run/train_options.h"
#include "tensor/collectives.h"
#include "tensor/params.h"
#include "tensor/rng.h"
#include "text/data.h"
#include "train/expert_monitor.h"
#include "train/expert_shards.h"
#include "train/metrics_log.h"
#include "train/ranks.h"
#include "train/trainer.h"

namespace moe {

// What one optimizer step gives the rest of the loop.
struct StepFigures {
  double loss = 0;        // the batch's mean training loss (every process's share)
  double router = 0;      // the batch's mean router loss (aux + z)
  double grad_norm = 0;   // the global gradient norm before clipping
  float lr = 0;           // the learning rate of the step
  int agreed_signal = 0;  // under P processes: the stop signal they agreed on (0: none)
};

class TrainingRun {
 public:
  // `folder`: the opened run folder on the root, null elsewhere; `dir`: its path on every
  // process; `tokens_dir`: the folder with train.tokens and valid.tokens. Builds the model.
  TrainingRun(const TrainOptions& o, const ModelConfig& config, RunFolder* folder,
              const std::string& dir, const std::string& tokens_dir, const Parallelism& parallel);

  // From `state` (trainer_state.json of the checkpoint to resume) or, when null, a fresh
  // initialisation; opens metrics.jsonl, prints what the run is and starts the clocks.
  void start(const nlohmann::json* state);
  // The step the run starts from: 0, or the checkpoint's.
  int64_t start_step() const { return start_step_; }

  // The optimizer step after `step` steps: grad_accum micro-batches forward and backward, the
  // sums across processes, the checks for a diverged run, clipping and AdamW.
  StepFigures take_step(int64_t step);

  // After `step`: the progress line (ending the terminal line when `line_ends`) and the metrics
  // line it starts; the window of the next progress line begins.
  nlohmann::json show_progress(int64_t step, const StepFigures& figures, bool line_ends);
  // The expert monitor's report of the window ending at `step`, added to `line`.
  void report_experts(int64_t step, nlohmann::json& line);
  // The validation loss (both ways under expert choice), printed and added to `line`.
  void validate(nlohmann::json& line);
  // Appends `line` (null: nothing to log at this step) to metrics.jsonl.
  void write_metrics(const nlohmann::json& line);

  // The SIGINT / SIGTERM that stops the run after this step (0: none): under P processes the
  // one they agreed on at the step, so that they save and stop together.
  int signal_to_stop(const StepFigures& figures) const;
  // Saves the checkpoint of `step` (every process takes part; the root writes).
  void checkpoint(int64_t step);
  // Says how to continue a run stopped by `signal` after `step` and records the signal.
  void stop_on_signal(int64_t step, int signal);
  // The result of a loop that ended after `step`.
  TrainResult finish(int64_t step);

 private:
  void restore(const nlohmann::json& state);
  void initialise();
  void print_setup() const;
  void print_routing_notes() const;
  void forward_backward(int64_t step, StepFigures& figures);
  void sum_across_ranks(StepFigures& figures);
  nlohmann::json comm_per_step();
  double evaluate(bool batch_selection, std::pair<double, double>* routed);
  Error stopped_error(const std::string& what, int64_t step) const;
  std::string current_dir() const;

  const TrainOptions& o_;
  const ModelConfig& config_;
  RunFolder* const folder_;  // null on ranks other than the root
  const std::string dir_;
  const Ranks ranks_;
  const TokenStream train_tokens_, valid_tokens_;
  ParamStore store_;
  Transformer model_;
  const AdamWOptions adamw_options_;
  AdamW optimizer_;
  const ParamSplit split_;
  std::vector<float> grad_scratch_;
  Rng data_rng_;
  ExpertMonitor monitor_;
  const int64_t tokens_per_step_;
  const int64_t batch_share_, seq_;                        // B and S of this process's [B, S] rows
  std::vector<int32_t> tokens_, targets_;                  // [batch_size, S]: the whole batch
  const std::span<const int32_t> my_tokens_, my_targets_;  // [B, S]: this process's rows
  const bool tty_;  // carriage returns and erase-line codes only on a terminal
  const int width_;
  const bool expert_choice_;
  std::optional<MetricsLog> metrics_;  // on the root
  int64_t start_step_ = 0;
  bool saved_ = false;  // the folder holds a checkpoint of this run
  TrainResult result_;

  // The progress window: the steps since the last progress line.
  std::chrono::steady_clock::time_point t_start_, t_window_;
  int64_t window_steps_ = 0;
  double window_loss_ = 0;
  CommStats window_comm_;  // at the window's start
};

}  // namespace moe
