#pragma once
// A run's metrics.jsonl: one JSON object per line, each with "step" (an int64) and the step's
// figures. Lines are appended and flushed one by one, so a killed run keeps what it logged; a
// line torn by a kill is dropped when the run resumes.
#include <cstdint>
#include <fstream>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace moe {

// Appends lines to the metrics file at `path` (which must exist or be creatable).
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path);
  // j: one JSON object, written as one line.
  void write(const nlohmann::json& j);

 private:
  std::ofstream out_;
};

// Drops the lines after `step` and any that do not parse (a resumed run rewrites what followed
// its checkpoint), in one atomic replacement: a kill leaves the old file or the new one.
void truncate_metrics(const std::string& path, int64_t step);

// The last validation loss logged in `dir`/metrics.jsonl at or before `step`; NaN when none.
double last_logged_val_loss(const std::string& dir, int64_t step);

}  // namespace moe
