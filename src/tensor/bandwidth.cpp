#include "tensor/bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>

#include "tensor/dispatch.h"
#include "tensor/lanes.h"
#include "tensor/tensor.h"

namespace moe {
namespace {

constexpr int64_t kLanes = 64;  // independent partial sums: the adds never wait on each other

// The sum of data[begin, end) (multiples of kLanes) in four 16-lane accumulators, compiled per
// kernel set: the probe reads as fast as the decode kernels it is compared with.
inline float sum_range_body(const float* data, int64_t begin, int64_t end) {
  Lanes16 acc[4], v;
  for (int64_t i = begin; i < end; i += kLanes)
    for (int q = 0; q < 4; ++q) {
      load16(v, data + i + 16 * q);
      acc[q].lo += v.lo;
      acc[q].hi += v.hi;
    }
  return lane_total(acc[0]) + lane_total(acc[1]) + lane_total(acc[2]) + lane_total(acc[3]);
}

MOE_KERNEL(sum_range, (const float* data, int64_t begin, int64_t end), (data, begin, end),
           sum_range_body)

}  // namespace

double measure_read_bandwidth(int64_t bytes, int repeats) {
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
      total += sum_range(data, begin, end);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    sink = sink + total;
    best = std::max(best, static_cast<double>(n) * sizeof(float) / seconds);
  }
  return best;
}

}  // namespace moe
