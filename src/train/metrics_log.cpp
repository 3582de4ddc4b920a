#include "train/metrics_log.h"

#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {

MetricsLog::MetricsLog(const std::string& path) : out_(path, std::ios::app) {
  if (!out_) throw Error("cannot open '" + path + "' for appending");
}

void MetricsLog::write(const nlohmann::json& j) {
  out_ << j.dump() << '\n' << std::flush;
  note_file_operation();
}

namespace {

// The lines of metrics.jsonl up to `step` that parse; `dropped` tells whether any did not.
std::vector<nlohmann::json> read_metrics(const std::string& path, int64_t step, bool* dropped) {
  std::ifstream in(path);
  std::vector<nlohmann::json> kept;
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.value("step", int64_t{0}) <= step)
      kept.push_back(j);
    else if (dropped)
      *dropped = true;
  }
  return kept;
}

}  // namespace

void truncate_metrics(const std::string& path, int64_t step) {
  bool dropped = false;
  const std::vector<nlohmann::json> kept = read_metrics(path, step, &dropped);
  if (!dropped) return;
  std::string text;
  for (const auto& j : kept) text += j.dump() + "\n";
  write_file_atomic(path, text);
}

double last_logged_val_loss(const std::string& dir, int64_t step) {
  double val = std::numeric_limits<double>::quiet_NaN();
  for (const auto& j : read_metrics(dir + "/metrics.jsonl", step, nullptr))
    if (j.contains("val_loss") && j["val_loss"].is_number()) val = j["val_loss"];
  return val;
}

}  // namespace moe
