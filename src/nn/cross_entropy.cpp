#include "nn/cross_entropy.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace moe {

double cross_entropy(int64_t n, int64_t V, std::span<const float> logits,
                     std::span<const int32_t> targets, std::span<float> dlogits, float grad_scale) {
  int64_t count = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] >= V || targets[r] < -1)
      throw Error("cross_entropy: target " + std::to_string(targets[r]) + " at row " +
                  std::to_string(r) + " is outside [0, " + std::to_string(V) + ") and not -1");
    count += targets[r] >= 0;
  }
  const float inv_count = count > 0 ? grad_scale / static_cast<float>(count) : 0.0f;
  // Per-thread partial sums added in thread order: the same bits for the same thread count.
  std::vector<double> partial(static_cast<size_t>(omp_get_max_threads()), 0.0);
#pragma omp parallel for schedule(static) if (n * V > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* l = logits.data() + r * V;
    const int32_t target = targets[r];
    const float m = *std::max_element(l, l + V);
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(l[i] - m));
    const double lse = m + std::log(sum);
    if (target >= 0) partial[static_cast<size_t>(omp_get_thread_num())] += lse - l[target];
    if (dlogits.empty()) continue;
    float* d = dlogits.data() + r * V;
    if (target < 0) {
      std::fill_n(d, V, 0.0f);
      continue;
    }
    const float lse_f = static_cast<float>(lse);
    for (int64_t i = 0; i < V; ++i) d[i] = std::exp(l[i] - lse_f) * inv_count;
    d[target] -= inv_count;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

}  // namespace moe
