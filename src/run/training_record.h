#pragma once
// A run folder's training record as metrics.jsonl holds it (one JSON object per line, appended
// by the trainer): read once, by one reader, for `moe eval`'s comparison and `moe report`, with
// one rule for "tokens to reach" (docs/FORMULAS.md, "Comparison").
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moe {

struct TrainingRecord {
  std::vector<nlohmann::json> metrics;  // every line, in order (a line torn by a kill skipped)
  // (training tokens, validation loss) at each validation, in order.
  std::vector<std::pair<int64_t, double>> val_curve;
  int64_t final_step = 0;                                            // the last line's step
  int64_t training_tokens = 0;                                       // the last line's tokens
  double final_val_loss = std::numeric_limits<double>::quiet_NaN();  // NaN when never validated
};

// The record of `metrics` lines (already parsed).
TrainingRecord training_record(std::vector<nlohmann::json> metrics);

// Reads `dir`/metrics.jsonl. Throws Error when it is missing or holds no metrics line.
TrainingRecord read_training_record(const std::string& dir);

// The training tokens a run needed to reach validation loss `target`: at the first point of
// `curve` at or below it, interpolated linearly from the point before; the first point itself
// when it is already below; nullopt when no point is.
std::optional<double> tokens_to_reach(const std::vector<std::pair<int64_t, double>>& curve,
                                      double target);

}  // namespace moe
