#include "train/training_run.h"

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/param_count.h"
#include "run/checkpoint.h"
#include "tensor/atomic_file.h"
#include "tensor/blas_info.h"
#include "tensor/progress.h"
#include "train/progress_line.h"

namespace moe {
namespace {

constexpr uint64_t kInitPurpose = 1, kDataPurpose = 2;

nlohmann::json rng_to_json(const Rng& r) {
  return r.state();
}
void rng_from_json(Rng& r, const nlohmann::json& j) {
  r.set_state(j.get<std::array<uint64_t, 4>>());
}

// The store with room for every parameter the model declared, as the optimizer needs it.
ParamStore& allocated(ParamStore& store) {
  store.allocate();
  return store;
}

AdamWOptions adamw_options(const TrainOptions& o) {
  AdamWOptions a;
  a.weight_decay = o.weight_decay;
  a.beta2 = o.beta2;
  return a;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TrainingRun::TrainingRun(const TrainOptions& o, const ModelConfig& config, RunFolder* folder,
                         const std::string& dir, const std::string& tokens_dir,
                         const Parallelism& parallel)
    : o_(o),
      config_(config),
      folder_(folder),
      dir_(dir),
      ranks_(parallel),
      train_tokens_(tokens_dir + "/train.tokens"),
      valid_tokens_(tokens_dir + "/valid.tokens"),
      model_(config, store_, o.seed,
             ranks_.comm && config.moe ? parallel.exchange(config.moe->num_experts)
                                       : ExpertExchangeFactory{}),
      adamw_options_(adamw_options(o)),
      optimizer_(allocated(store_), adamw_options_),
      split_(split_params(model_, store_)),
      data_rng_(Rng::for_purpose(o.seed, kDataPurpose)),
      monitor_(model_.num_layers()),
      tokens_per_step_(o.batch_size * o.seq_len * o.grad_accum),
      batch_share_(o.batch_size / ranks_.size),
      seq_(o.seq_len),
      tokens_(o.batch_size * seq_),
      targets_(o.batch_size * seq_),
      my_tokens_(
          std::span(tokens_).subspan(ranks_.rank * batch_share_ * seq_, batch_share_ * seq_)),
      my_targets_(
          std::span(targets_).subspan(ranks_.rank * batch_share_ * seq_, batch_share_ * seq_)),
      tty_(ranks_.root() && !o.quiet && ::isatty(STDERR_FILENO)),
      width_(tty_ ? terminal_width() : 80),
      expert_choice_(config.moe && config.moe->router_type == RouterType::ExpertChoice) {
  result_.val_loss = std::numeric_limits<double>::quiet_NaN();
  result_.train_loss = std::numeric_limits<double>::quiet_NaN();
}

void TrainingRun::start(const nlohmann::json* state) {
  if (state)
    restore(*state);
  else
    initialise();
  if (ranks_.root()) metrics_.emplace(dir_ + "/metrics.jsonl");
  print_setup();
  t_start_ = t_window_ = std::chrono::steady_clock::now();
  window_comm_ = ranks_.comm ? ranks_.comm->stats() : CommStats{};
}

void TrainingRun::restore(const nlohmann::json& st) {
  start_step_ = st.at("step");
  if (ranks_.comm) {  // every process reads the whole checkpoint and keeps its part
    FullModel full(config_, o_.seed, adamw_options_);
    load_checkpoint(dir_, start_step_, *full.model, full.store, *full.optimizer);
    copy_from_full(full, model_, store_, optimizer_, ranks_.rank, ranks_.size);
  } else {
    load_checkpoint(dir_, start_step_, model_, store_, optimizer_);
  }
  rng_from_json(data_rng_, st.at("data_rng"));
  const auto& noise = st.at("noise_rngs");
  for (int64_t l = 0; l < model_.num_layers(); ++l)
    if (MoeLayer* m = model_.moe_layer(l)) rng_from_json(m->noise_rng(), noise.at(l));
  if (st.contains("monitor")) monitor_.restore(st["monitor"], dir_, start_step_, o_.monitor_every);
  if (st.contains("val_loss") && st["val_loss"].is_number()) result_.val_loss = st["val_loss"];
  if (ranks_.root()) truncate_metrics(dir_ + "/metrics.jsonl", start_step_);
  saved_ = true;
}

void TrainingRun::initialise() {
  Rng init = Rng::for_purpose(o_.seed, kInitPurpose);
  if (ranks_.comm) {  // the whole model initialised as one process does, then each keeps its part
    FullModel full(config_, o_.seed, adamw_options_);
    full.model->init_parameters(init);
    copy_from_full(full, model_, store_, optimizer_, ranks_.rank, ranks_.size);
  } else {
    model_.init_parameters(init);
  }
  if (ranks_.root()) write_file_atomic(dir_ + "/metrics.jsonl", "");
}

void TrainingRun::print_setup() const {
  if (!ranks_.root()) return;
  const ParamCount count = count_params(arch_from_model_config(config_, "run"));
  std::fprintf(stderr,
               "model: %.2fM parameters, %.2fM active per token, %lld MoE of %lld blocks; "
               "%lld training tokens, %lld validation tokens; %lld tokens per step\n",
               double(count.total) / 1e6, double(count.active) / 1e6,
               static_cast<long long>(config_.num_moe_layers()),
               static_cast<long long>(config_.num_hidden_layers),
               static_cast<long long>(train_tokens_.size()),
               static_cast<long long>(valid_tokens_.size()),
               static_cast<long long>(tokens_per_step_));
  if (ranks_.comm)
    std::fprintf(stderr,
                 "expert parallelism: %d ranks, %lld experts per MoE layer on each, %lld "
                 "sequences of every batch on each\n",
                 ranks_.size,
                 static_cast<long long>(config_.moe ? config_.moe->num_experts / ranks_.size : 0),
                 static_cast<long long>(o_.batch_size / ranks_.size));
  warn_about_blas_kernel();
  print_routing_notes();
}

// Where training routes otherwise than validation and generation do.
void TrainingRun::print_routing_notes() const {
  if (!config_.moe) return;
  const MoeConfig& m = *config_.moe;
  if (expert_choice_ || (m.capacity_factor > 0 && m.drop_policy == DropPolicy::Probs))
    std::fprintf(stderr,
                 "note: in training, %s, so later tokens of a batch can change how earlier ones "
                 "are routed (as in Switch and GShard); validation and generation route "
                 "causally\n",
                 expert_choice_ ? "expert choice selects each expert's tokens across the batch"
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

StepFigures TrainingRun::take_step(int64_t step) {
  store_.zero_grads();
  StepFigures f;
  forward_backward(step, f);
  if (ranks_.comm) sum_across_ranks(f);
  if (!std::isfinite(f.loss) || !std::isfinite(f.router))
    throw_alike(ranks_, stopped_error("loss is " + std::to_string(f.loss), step + 1));
  f.grad_norm = ranks_.comm ? clip_grad_norm_across(*ranks_.comm, store_, split_, o_.grad_clip)
                            : clip_grad_norm(store_, o_.grad_clip);
  if (!std::isfinite(f.grad_norm))
    throw_alike(ranks_, stopped_error("gradient norm is not finite", step + 1));
  f.lr = learning_rate(step, o_.steps, o_.warmup, o_.lr, o_.min_lr);
  optimizer_.step(f.lr);
  model_.update_expert_bias();
  ++window_steps_;
  window_loss_ += f.loss;
  return f;
}

// The grad_accum micro-batches of the step after `step`: this process's mean losses in
// `figures`, its gradients in the store, its routing in the monitor.
void TrainingRun::forward_backward(int64_t step, StepFigures& figures) {
  ModelStepOptions opt;
  // Under P processes each gradient is 1/P of its batch share's: the sum over processes is
  // then the whole batch's mean, with no scaling after the sum.
  opt.grad_scale = 1.0f / static_cast<float>(o_.grad_accum * ranks_.size);
  for (int64_t micro = 0; micro < o_.grad_accum; ++micro) {
    // Every process draws the whole batch (the same draws) and takes its share.
    sample_batch(train_tokens_, data_rng_, o_.batch_size, seq_, tokens_, targets_);
    try {
      figures.loss +=
          model_.forward(my_tokens_, my_targets_, batch_share_, seq_, opt) / double(o_.grad_accum);
    } catch (const Error& e) {  // non-finite activations: the run has diverged
      throw stopped_error(e.what(), step + 1);
    }
    figures.router += model_.router_loss() / double(o_.grad_accum);
    model_.backward();
    monitor_.add(model_, ranks_.comm);
  }
}

// The losses are means over equal shares; a signal on any process stops them all (at the same
// step, so that they save together); the replicated parameters' gradients are summed.
void TrainingRun::sum_across_ranks(StepFigures& figures) {
  const int mine = stop_signal();
  double sums[] = {figures.loss, figures.router, double(mine != 0), double(mine)};
  ranks_.comm->sum(sums);
  figures.loss = sums[0] / ranks_.size;
  figures.router = sums[1] / ranks_.size;
  figures.agreed_signal = sums[2] > 0 ? static_cast<int>(sums[3] / sums[2]) : 0;
  sum_replicated_grads(*ranks_.comm, store_, split_, grad_scratch_);
}

nlohmann::json TrainingRun::show_progress(int64_t step, const StepFigures& f, bool line_ends) {
  const double tok_s =
      double(window_steps_ * tokens_per_step_) / std::max(seconds_since(t_window_), 1e-9);
  nlohmann::json line = {{"step", step},
                         {"loss", f.loss},
                         {"lr", f.lr},
                         {"tokens_per_s", tok_s},
                         {"grad_norm", f.grad_norm},
                         {"router_loss", f.router},
                         {"tokens", step * tokens_per_step_}};
  if (ranks_.comm) line.update(comm_per_step());
  const double eta = seconds_since(t_start_) / double(step - start_step_) * double(o_.steps - step);
  result_.train_loss = window_loss_ / double(window_steps_);
  if (ranks_.root() && !o_.quiet) {
    const std::string text =
        format_progress_line(step, o_.steps, result_.train_loss, f.lr, tok_s, eta, width_);
    if (tty_)
      std::fprintf(stderr, "\r%s\033[K%s", text.c_str(), line_ends ? "\n" : "");
    else
      std::fprintf(stderr, "%s\n", text.c_str());
  }
  t_window_ = std::chrono::steady_clock::now();
  window_steps_ = 0;
  window_loss_ = 0;
  return line;
}

// The root's communication per step over the window: bytes it sent to other ranks, seconds in
// the token exchange (all-to-all) and in the other collectives.
nlohmann::json TrainingRun::comm_per_step() {
  const CommStats& now = ranks_.comm->stats();
  const double n = double(window_steps_);
  nlohmann::json figures = {
      {"comm_bytes_per_step", double(now.bytes_sent - window_comm_.bytes_sent) / n},
      {"exchange_s_per_step", (now.exchange_seconds - window_comm_.exchange_seconds) / n},
      {"reduce_s_per_step", (now.reduce_seconds - window_comm_.reduce_seconds) / n}};
  window_comm_ = now;
  return figures;
}

void TrainingRun::report_experts(int64_t step, nlohmann::json& line) {
  if (!ranks_.root()) return;  // the monitor holds every process's counts
  line["experts_steps"] = {monitor_.first_step(), step};
  line["experts"] = monitor_.report(model_, step);
}

void TrainingRun::validate(nlohmann::json& line) {
  const bool root = ranks_.root();
  std::pair<double, double> routed{0, 0};
  result_.val_loss = evaluate(false, &routed);
  line["val_loss"] = result_.val_loss;
  if (root)
    std::fprintf(stderr, "  validation loss %.4f (perplexity %.1f)", result_.val_loss,
                 std::exp(result_.val_loss));
  if (expert_choice_) {
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

// Validation in eval mode: causal routing (what generation computes), or for expert choice
// with `batch_selection` the selection across the batch that training uses. `routed` gets the
// experts per token and the share of tokens no expert took, over all MoE layers.
double TrainingRun::evaluate(bool batch_selection, std::pair<double, double>* routed) {
  const int64_t windows = eval_windows(valid_tokens_, seq_);
  const int64_t batches = std::min(o_.eval_batches, windows / o_.batch_size);
  if (batches == 0) return std::numeric_limits<double>::quiet_NaN();
  ModelStepOptions eval;
  eval.training = false;
  eval.compute_grad = false;
  eval.batch_selection_in_eval = batch_selection;
  double total = 0, tokens_routed = 0, kept = 0, unrouted = 0;
  for (int64_t b = 0; b < batches; ++b) {
    eval_batch(valid_tokens_, b * o_.batch_size, o_.batch_size, batches * o_.batch_size, seq_,
               tokens_, targets_);
    total += model_.forward(my_tokens_, my_targets_, batch_share_, seq_, eval);
    for (int64_t l = 0; l < model_.num_layers(); ++l)
      if (const MoeLayer* m = model_.moe_layer(l)) {
        const RoutingStats& rs = m->stats();
        tokens_routed += double(rs.tokens);
        kept += double(rs.assignments - rs.dropped);
        unrouted += double(rs.unrouted_tokens);
      }
  }
  if (ranks_.comm) {  // each process's mean over its equal share: the mean of the means
    double sums[] = {total, tokens_routed, kept, unrouted};
    ranks_.comm->sum(sums);
    total = sums[0] / ranks_.size;
    tokens_routed = sums[1];
    kept = sums[2];
    unrouted = sums[3];
  }
  if (routed && tokens_routed > 0) *routed = {kept / tokens_routed, unrouted / tokens_routed};
  return total / double(batches);
}

void TrainingRun::write_metrics(const nlohmann::json& line) {
  if (!line.is_null() && ranks_.root()) metrics_->write(line);
}

int TrainingRun::signal_to_stop(const StepFigures& figures) const {
  return ranks_.comm ? figures.agreed_signal : stop_signal();
}

void TrainingRun::checkpoint(int64_t step) {
  nlohmann::json st = {{"step", step},
                       {"options", train_options_to_json(o_)},
                       {"data_rng", rng_to_json(data_rng_)},
                       {"tokens_seen", step * tokens_per_step_}};
  nlohmann::json noise = nlohmann::json::array();
  for (int64_t l = 0; l < model_.num_layers(); ++l)
    noise.push_back(model_.moe_layer(l) ? rng_to_json(model_.moe_layer(l)->noise_rng())
                                        : nlohmann::json(nullptr));
  st["noise_rngs"] = noise;
  st["monitor"] = monitor_.to_json();
  if (std::isfinite(result_.val_loss)) st["val_loss"] = result_.val_loss;
  // Kept checkpoints (--keep-checkpoints) are written before the step's own checkpoint
  // commits, so a kill and resume never leaves a kept step missing.
  const bool keep = o_.keep_checkpoints && (step % o_.save_every == 0 || step == o_.steps);
  const bool root = ranks_.root();
  if (ranks_.comm) {
    // Every process's data position and streams are the root's (one data stream, the same
    // draws everywhere), so the root's state serves any number of processes on resume.
    st["expert_parallel"] = ranks_.size;
    std::unique_ptr<FullModel> full;
    if (root) full = std::make_unique<FullModel>(config_, o_.seed, adamw_options_);
    gather_to_full(*ranks_.comm, model_, store_, optimizer_, full.get());
    if (root && keep) keep_checkpoint(current_dir(), step, *full->model, full->store);
    if (root) save_checkpoint(current_dir(), *full->model, full->store, *full->optimizer, st);
  } else {
    if (keep) keep_checkpoint(current_dir(), step, model_, store_);
    save_checkpoint(current_dir(), model_, store_, optimizer_, st);
  }
  if (root) folder_->checkpoint_saved();
  saved_ = true;
}

void TrainingRun::stop_on_signal(int64_t step, int signal) {
  if (ranks_.root())
    std::fprintf(stderr,
                 "%sinterrupted: saved step %lld to '%s'; continue with "
                 "moe train --resume %s\n",
                 tty_ ? "\n" : "", static_cast<long long>(step), current_dir().c_str(),
                 current_dir().c_str());
  result_.stopped_by_signal = signal;
}

TrainResult TrainingRun::finish(int64_t step) {
  if (tty_) std::fputc('\n', stderr);
  result_.dir = current_dir();
  result_.steps_done = step;
  result_.total_steps = o_.steps;
  if (ranks_.root()) result_.lock = folder_->lock();
  return std::move(result_);
}

Error TrainingRun::stopped_error(const std::string& what, int64_t step) const {
  return Error(what + " at step " + std::to_string(step) + "; training stopped (" +
               (saved_ ? "the last checkpoint in '" + current_dir() + "' is kept"
                       : std::string("no checkpoint was saved yet")) +
               ")");
}

// A --force run's folder moves into place at its first checkpoint (the root's RunFolder tracks
// it); the files opened before stay open across the move.
std::string TrainingRun::current_dir() const {
  return folder_ ? folder_->dir() : dir_;
}

}  // namespace moe
