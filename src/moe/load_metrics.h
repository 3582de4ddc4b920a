#pragma once
// Expert-load metrics (docs/FORMULAS.md, "Load metrics") over per-expert assignment counts.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe {

struct LoadMetrics {
  double cv = 0;                  // std / mean (population std)
  double gini = 0;                // 0 uniform, (E-1)/E all on one expert
  double normalized_entropy = 0;  // 1 uniform, 0 all on one expert
  double max_over_mean = 0;
  std::vector<int64_t> overloaded;  // experts above 3x the mean load
  std::vector<int64_t> starved;     // experts below 0.1x the mean load (collapse)
};

LoadMetrics load_metrics(std::span<const int64_t> counts);

// One character per expert, height proportional to its load relative to the busiest
// (U+2581..U+2588 blocks; a space for zero): a histogram that fits in a terminal line.
std::string load_bars(std::span<const int64_t> counts);

}  // namespace moe
