#include "moe/load_metrics.h"

#include <algorithm>
#include <cmath>

namespace moe {

LoadMetrics load_metrics(std::span<const int64_t> counts) {
  LoadMetrics m;
  const int64_t E = static_cast<int64_t>(counts.size());
  double total = 0;
  for (int64_t c : counts) total += double(c);
  if (E == 0 || total <= 0) return m;
  const double mean = total / double(E);
  double var = 0, abs_diff = 0, entropy = 0;
  for (int64_t i = 0; i < E; ++i) {
    const double c = double(counts[i]);
    var += (c - mean) * (c - mean);
    for (int64_t j = 0; j < E; ++j) abs_diff += std::abs(c - double(counts[j]));
    if (c > 0) entropy -= (c / total) * std::log(c / total);
    if (c > 3.0 * mean) m.overloaded.push_back(i);
    if (c < 0.1 * mean) m.starved.push_back(i);
  }
  m.cv = std::sqrt(var / double(E)) / mean;
  m.gini = abs_diff / (2.0 * double(E) * total);
  m.normalized_entropy = E > 1 ? entropy / std::log(double(E)) : 1.0;
  m.max_over_mean = double(*std::max_element(counts.begin(), counts.end())) / mean;
  return m;
}

std::string load_bars(std::span<const int64_t> counts) {
  static const char* const kBlocks[] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                        "\u2585", "\u2586", "\u2587", "\u2588"};
  const int64_t top = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  std::string out;
  for (int64_t c : counts) {
    if (c <= 0 || top <= 0) {
      out += ' ';
      continue;
    }
    const int level = static_cast<int>(std::ceil(8.0 * double(c) / double(top))) - 1;
    out += kBlocks[std::clamp(level, 0, 7)];
  }
  return out;
}

}  // namespace moe
