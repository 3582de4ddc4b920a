#include "tensor/vector_ops.h"

#include <algorithm>
#include <limits>

#include "tensor/dispatch.h"
#include "tensor/fast_exp.h"
#include "tensor/lanes.h"

namespace moe {
namespace {

// The sum of x[0, n) in 16 lanes (tensor/lanes.h).
inline float lane_sum(const float* x, int64_t n) {
  Lanes16 acc, v;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    load16(v, x + i);
    acc.lo += v.lo;
    acc.hi += v.hi;
  }
  if (i < n) {
    load_tail(v, x + i, n - i);
    acc.lo += v.lo;
    acc.hi += v.hi;
  }
  return lane_total(acc);
}

inline float max_body(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

inline float exp_sum_body(const float* in, float* out, int64_t n, float shift) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = fast_exp(in[i] - shift);
  return lane_sum(out, n);
}

inline void exp_body(float* x, int64_t n, float shift) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i] - shift);
}

inline void scale_body(float* x, int64_t n, float s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

inline float dot_body(const float* a, const float* b, int64_t n) {
  return lane_dot(a, b, n);
}

MOE_KERNEL(max_kernel, (const float* x, int64_t n), (x, n), max_body)
MOE_KERNEL(exp_sum_kernel, (const float* in, float* out, int64_t n, float shift),
           (in, out, n, shift), exp_sum_body)
MOE_KERNEL(exp_kernel, (float* x, int64_t n, float shift), (x, n, shift), exp_body)
MOE_KERNEL(scale_kernel, (float* x, int64_t n, float s), (x, n, s), scale_body)
MOE_KERNEL(dot_kernel, (const float* a, const float* b, int64_t n), (a, b, n), dot_body)

}  // namespace

float max_value(const float* x, int64_t n) {
  return max_kernel(x, n);
}
float exp_shifted_sum(const float* in, float* out, int64_t n, float shift) {
  return exp_sum_kernel(in, out, n, shift);
}
void exp_shifted(float* x, int64_t n, float shift) {
  exp_kernel(x, n, shift);
}
void scale_values(float* x, int64_t n, float s) {
  scale_kernel(x, n, s);
}
float dot(const float* a, const float* b, int64_t n) {
  return dot_kernel(a, b, n);
}

}  // namespace moe
