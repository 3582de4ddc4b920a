#pragma once
// Element-wise and reducing loops over one row of floats, compiled per kernel set
// (tensor/dispatch.h). Sums run in a fixed order of 16 lanes, so every set gives the same bits.
#include <cstdint>

namespace moe {

// The largest of x[0, n); -inf when n is 0. A NaN in x may or may not win, as std::max's.
float max_value(const float* x, int64_t n);
// out[i] = exp(in[i] - shift) (fast_exp), returning the sum of the out[i]; in may equal out.
float exp_shifted_sum(const float* in, float* out, int64_t n, float shift);
// x[i] = exp(x[i] - shift).
void exp_shifted(float* x, int64_t n, float shift);
// x[i] *= s.
void scale_values(float* x, int64_t n, float s);
// The sum of a[i] * b[i].
float dot(const float* a, const float* b, int64_t n);

}  // namespace moe
