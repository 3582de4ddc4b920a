#include "run/training_record.h"

#include <fstream>

#include "tensor/error.h"

namespace moe {

TrainingRecord training_record(std::vector<nlohmann::json> metrics) {
  TrainingRecord record;
  for (const nlohmann::json& j : metrics) {
    if (j.contains("step") && j["step"].is_number_integer()) record.final_step = j["step"];
    if (!j.contains("tokens") || !j["tokens"].is_number_integer()) continue;
    record.training_tokens = j["tokens"];
    if (j.contains("val_loss") && j["val_loss"].is_number()) {
      record.final_val_loss = j["val_loss"];
      record.val_curve.emplace_back(record.training_tokens, record.final_val_loss);
    }
  }
  record.metrics = std::move(metrics);
  return record;
}

TrainingRecord read_training_record(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  if (!in) throw Error("run '" + dir + "' has no metrics.jsonl");
  std::vector<nlohmann::json> metrics;
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) metrics.push_back(std::move(j));  // a line torn by a kill is skipped
  }
  if (metrics.empty()) throw Error("run '" + dir + "': metrics.jsonl holds no metrics line");
  return training_record(std::move(metrics));
}

std::optional<double> tokens_to_reach(const std::vector<std::pair<int64_t, double>>& curve,
                                      double target) {
  for (size_t i = 0; i < curve.size(); ++i) {
    const auto [tokens, loss] = curve[i];
    if (!(loss <= target)) continue;
    if (i == 0) return double(tokens);
    const auto [t0, l0] = curve[i - 1];
    const double f = l0 > loss ? (l0 - target) / (l0 - loss) : 1.0;
    return double(t0) + f * double(tokens - t0);
  }
  return std::nullopt;
}

}  // namespace moe
