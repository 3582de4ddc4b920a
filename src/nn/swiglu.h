#pragma once
// SwiGLU feed-forward on a block of rows: y = (silu(x W1^T) * (x W3^T)) W2^T.
// W1 and W3 are stored stacked as one [2F, D] matrix (rows 0..F-1 = w1 "gate", rows F..2F-1
// = w3 "up", each [out, in] as in Hugging Face Mixtral) so one GEMM computes both.
#include <cstdint>
#include <span>

#include "tensor/fast_exp.h"

namespace moe {

// silu(v) = v sigmoid(v), the gate's activation; the inference InferenceModel's experts use it too.
inline float silu(float v) {
  return v * (1.0f / (1.0f + fast_exp(-v)));
}

// out[i] = silu(gate[i]) * up[i] for i < n (out may be gate), compiled per kernel set.
void silu_gate(float* out, const float* gate, const float* up, int64_t n);

struct SwigluShape {
  int64_t rows;    // n
  int64_t model;   // D
  int64_t hidden;  // F
};

// x: [n, D]  w13: [2F, D]  w2: [D, F]
// h13: [n, 2F] (saved pre-activations)  act: [n, F] (saved)  y: [n, D] (overwritten)
void swiglu_forward(SwigluShape s, std::span<const float> x, std::span<const float> w13,
                    std::span<const float> w2, std::span<float> h13, std::span<float> act,
                    std::span<float> y);

// dy: [n, D] -> dx: [n, D] (overwritten); dw13: [2F, D], dw2: [D, F] are accumulated when
// `accumulate`, else overwritten. dh13: [n, 2F] is scratch (act's gradient is built in it).
void swiglu_backward(SwigluShape s, std::span<const float> x, std::span<const float> w13,
                     std::span<const float> w2, std::span<const float> h13,
                     std::span<const float> act, std::span<const float> dy, std::span<float> dh13,
                     std::span<float> dx, std::span<float> dw13, std::span<float> dw2,
                     bool accumulate);

}  // namespace moe
