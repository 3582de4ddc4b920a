#include "tensor/bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>

#include "tensor/tensor.h"

namespace moe {

double measure_read_bandwidth(int64_t bytes, int repeats) {
  constexpr int64_t kLanes = 64;  // independent partial sums: the adds never wait on each other
  Tensor buffer({bytes / static_cast<int64_t>(sizeof(float)) / kLanes * kLanes},
                "bandwidth probe");  // zero-filled, so every page is touched before timing
  const int64_t n = buffer.numel();
  const float* data = buffer.data();

  double best = 0.0;
  volatile float sink = 0.0f;  // keeps the sums, and so the reads, alive
  for (int pass = 0; pass < repeats; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = n / kLanes * t / threads * kLanes;
      const int64_t end = n / kLanes * (t + 1) / threads * kLanes;
      float partial[kLanes] = {};
      for (int64_t i = begin; i < end; i += kLanes)
        for (int64_t j = 0; j < kLanes; ++j) partial[j] += data[i + j];
      for (const float p : partial) total += p;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    sink = sink + total;
    best = std::max(best, static_cast<double>(n) * sizeof(float) / seconds);
  }
  return best;
}

}  // namespace moe
