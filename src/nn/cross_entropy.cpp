#include "nn/cross_entropy.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tensor/vector_ops.h"

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
  // Without dlogits, the exponentials go to a per-thread row, so both paths compute the loss
  // with the same operations (the same bits with and without the gradient).
  std::vector<float> rows(dlogits.empty() ? static_cast<size_t>(omp_get_max_threads() * V) : 0);
#pragma omp parallel for schedule(static) if (n * V > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* l = logits.data() + r * V;
    const int32_t target = targets[r];
    const float m = max_value(l, V);
    // One exp per logit: exp(l - m) is written into d, then scaled into the softmax.
    float* d =
        dlogits.empty() ? rows.data() + int64_t{omp_get_thread_num()} * V : dlogits.data() + r * V;
    const float l_target = target >= 0 ? l[target] : 0.0f;  // d may alias l
    const float sum = exp_shifted_sum(l, d, V, m);
    if (target >= 0)
      partial[static_cast<size_t>(omp_get_thread_num())] += m + std::log(double(sum)) - l_target;
    if (dlogits.empty()) continue;
    if (target < 0) {
      std::fill_n(d, V, 0.0f);
      continue;
    }
    scale_values(d, V, inv_count / sum);
    d[target] -= inv_count;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

}  // namespace moe
