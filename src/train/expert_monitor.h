#pragma once
// The expert monitor: expert loads accumulated between reports, per layer. Each report prints
// bars with Gini, entropy and drop rate, with a warning for each expert over 3x or under a tenth
// of the mean load and for a drop rate over kDropWarningRate, and returns the window in full for
// metrics.jsonl. Its state is saved in checkpoints, so a resumed run reports the same windows as
// one never stopped.
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "moe/load_metrics.h"
#include "tensor/collectives.h"

namespace moe {

// A MoE layer that drops more than this share of its token assignments over a monitor window
// gets a warning.
inline constexpr double kDropWarningRate = 0.01;

class ExpertMonitor {
 public:
  // layers: the model's blocks, dense ones included (they stay empty).
  explicit ExpertMonitor(int64_t layers)
      : loads_(layers), dropped_(layers), assigned_(layers), tokens_(layers), unrouted_(layers) {}

  // `saved`: to_json()'s object from trainer_state.json in `dir`; `step`: the checkpoint's. The
  // window then began after the last report (states saved before "first_step" was kept began
  // their windows at a multiple of monitor_every).
  void restore(const nlohmann::json& saved, const std::string& dir, int64_t step,
               int64_t monitor_every);
  // {"loads": [layer][expert], "dropped", "assigned", "tokens", "unrouted": [layer],
  //  "first_step"}
  nlohmann::json to_json() const;
  int64_t first_step() const { return first_step_; }

  // Adds the routing of the model's last forward; with `comm`, of every process's forward.
  void add(const Transformer& model, Collectives* comm);

  // Prints the report of the window that ends at `step`, returns it for metrics.jsonl (one
  // object per MoE layer) and starts a new window.
  nlohmann::json report(const Transformer& model, int64_t step);

 private:
  // The report's printed lines for MoE layer `l` of `model`.
  void print_layer(const Transformer& model, int64_t l, int64_t step, const LoadMetrics& lm,
                   double drop_rate, double per_token, double unrouted) const;

  std::vector<std::vector<int64_t>> loads_;  // [layer][expert]; empty for dense layers
  std::vector<int64_t> dropped_, assigned_;  // [layer]
  std::vector<int64_t> tokens_, unrouted_;   // [layer] tokens routed; tokens no expert took
  int64_t first_step_ = 1;                   // the window's first step
  std::vector<int64_t> counts_;              // add()'s scratch
};

}  // namespace moe
