#include "nn/embedding.h"

#include <algorithm>
#include <string>

#include "tensor/error.h"

namespace moe {

void embedding_forward(int64_t V, int64_t D, std::span<const int32_t> tokens,
                       std::span<const float> table, std::span<float> y) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t t = 0; t < n; ++t)
    if (tokens[t] < 0 || tokens[t] >= V)
      throw Error("embedding: token id " + std::to_string(tokens[t]) + " at position " +
                  std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
#pragma omp parallel for schedule(static) if (n * D > 65536)
  for (int64_t t = 0; t < n; ++t)
    std::copy_n(table.data() + int64_t{tokens[t]} * D, D, y.data() + t * D);
}

void embedding_backward(int64_t D, std::span<const int32_t> tokens, std::span<const float> dy,
                        std::span<float> dtable) {
  // Serial: repeated ids would race, and the order of the sums must not depend on threads.
  for (size_t t = 0; t < tokens.size(); ++t) {
    float* row = dtable.data() + int64_t{tokens[t]} * D;
    const float* g = dy.data() + static_cast<int64_t>(t) * D;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) row[i] += g[i];
  }
}

}  // namespace moe
