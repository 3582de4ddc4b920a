#include "nn/swiglu.h"

#include <cmath>

#include "tensor/dispatch.h"
#include "tensor/fast_exp.h"
#include "tensor/gemm.h"

namespace moe {
namespace {

inline float sigmoid(float v) {
  return 1.0f / (1.0f + fast_exp(-v));
}

inline void silu_gate_body(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = silu(gate[i]) * up[i];
}

// d1: dact in, dgate out; d3: dup out (one row of F).
inline void silu_gate_backward_body(const float* h1, const float* h3, float* d1, float* d3,
                                    int64_t F) {
#pragma omp simd
  for (int64_t i = 0; i < F; ++i) {
    const float sg = sigmoid(h1[i]);
    const float silu = h1[i] * sg;
    const float dact = d1[i];
    d3[i] = dact * silu;
    d1[i] = dact * h3[i] * sg * (1.0f + h1[i] * (1.0f - sg));  // silu'(h) = sg (1 + h (1 - sg))
  }
}

MOE_KERNEL(silu_gate_kernel, (float* out, const float* gate, const float* up, int64_t n),
           (out, gate, up, n), silu_gate_body)
MOE_KERNEL(silu_gate_backward, (const float* h1, const float* h3, float* d1, float* d3, int64_t F),
           (h1, h3, d1, d3, F), silu_gate_backward_body)

}  // namespace

void silu_gate(float* out, const float* gate, const float* up, int64_t n) {
  silu_gate_kernel(out, gate, up, n);
}

void swiglu_forward(SwigluShape s, std::span<const float> x, std::span<const float> w13,
                    std::span<const float> w2, std::span<float> h13, std::span<float> act,
                    std::span<float> y) {
  const int64_t n = s.rows, D = s.model, F = s.hidden;
  if (n == 0) return;
  gemm(Trans::No, Trans::Yes, n, 2 * F, D, 1.0f, x.data(), D, w13.data(), D, 0.0f, h13.data(),
       2 * F);
#pragma omp parallel for schedule(static) if (n * F > 32768)
  for (int64_t r = 0; r < n; ++r) {
    const float* h1 = h13.data() + r * 2 * F;
    const float* h3 = h1 + F;
    silu_gate(act.data() + r * F, h1, h3, F);
  }
  gemm(Trans::No, Trans::Yes, n, D, F, 1.0f, act.data(), F, w2.data(), F, 0.0f, y.data(), D);
}

void swiglu_backward(SwigluShape s, std::span<const float> x, std::span<const float> w13,
                     std::span<const float> w2, std::span<const float> h13,
                     std::span<const float> act, std::span<const float> dy, std::span<float> dh13,
                     std::span<float> dx, std::span<float> dw13, std::span<float> dw2,
                     bool accumulate) {
  const int64_t n = s.rows, D = s.model, F = s.hidden;
  const float beta = accumulate ? 1.0f : 0.0f;
  // dW2 = dy^T act
  gemm(Trans::Yes, Trans::No, D, F, n, 1.0f, dy.data(), D, act.data(), F, beta, dw2.data(), F);
  // dact = dy W2, written into the first F columns of dh13's rows
  gemm(Trans::No, Trans::No, n, F, D, 1.0f, dy.data(), D, w2.data(), F, 0.0f, dh13.data(), 2 * F);
#pragma omp parallel for schedule(static) if (n * F > 32768)
  for (int64_t r = 0; r < n; ++r) {
    const float* h1 = h13.data() + r * 2 * F;
    const float* h3 = h1 + F;
    float* d1 = dh13.data() + r * 2 * F;
    silu_gate_backward(h1, h3, d1, d1 + F, F);
  }
  // dW13 = dh13^T x,  dx = dh13 W13
  gemm(Trans::Yes, Trans::No, 2 * F, D, n, 1.0f, dh13.data(), 2 * F, x.data(), D, beta, dw13.data(),
       D);
  gemm(Trans::No, Trans::No, n, D, 2 * F, 1.0f, dh13.data(), 2 * F, w13.data(), D, 0.0f, dx.data(),
       D);
}

}  // namespace moe
