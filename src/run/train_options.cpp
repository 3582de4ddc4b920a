#include "run/train_options.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <utility>

#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {

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
}  // namespace moe
