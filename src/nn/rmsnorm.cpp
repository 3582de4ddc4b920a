#include "nn/rmsnorm.h"

#include <omp.h>

#include <cmath>

namespace moe {

void rmsnorm_forward(int64_t n, int64_t D, float eps, std::span<const float> x,
                     std::span<const float> w, std::span<float> y, std::span<float> rstd) {
#pragma omp parallel for schedule(static) if (n * D > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x.data() + r * D;
    float* yr = y.data() + r * D;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < D; ++i) sum_sq += double(xr[i]) * xr[i];
    const float s = static_cast<float>(1.0 / std::sqrt(sum_sq / double(D) + eps));
    rstd[r] = s;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * s * w[i];
  }
}

void rmsnorm_backward(int64_t n, int64_t D, std::span<const float> x, std::span<const float> w,
                      std::span<const float> rstd, std::span<const float> dy, std::span<float> dx,
                      std::span<float> dw) {
  // dx = s (w*dy) - s^3 / D * x * sum(w*dy*x), with s = rstd.
#pragma omp parallel for schedule(static) if (n * D > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x.data() + r * D;
    const float* gr = dy.data() + r * D;
    float* dxr = dx.data() + r * D;
    const float s = rstd[r];
    double dot = 0.0;
    for (int64_t i = 0; i < D; ++i) dot += double(w[i]) * gr[i] * xr[i];
    const float c = static_cast<float>(dot) * s * s * s / static_cast<float>(D);
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) dxr[i] += s * w[i] * gr[i] - c * xr[i];
  }
  // dw sums over rows: each thread owns a range of columns and walks the rows in order, so
  // the result does not depend on the thread count.
#pragma omp parallel if (n * D > 65536)
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t c0 = D * t / threads, c1 = D * (t + 1) / threads;
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x.data() + r * D;
      const float* gr = dy.data() + r * D;
      const float s = rstd[r];
#pragma omp simd
      for (int64_t i = c0; i < c1; ++i) dw[i] += gr[i] * xr[i] * s;
    }
  }
}

}  // namespace moe
