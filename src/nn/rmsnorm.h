#pragma once
// RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * w, per row.
#include <cstdint>
#include <span>

namespace moe {

// x: [n, D]  w: [D] -> y: [n, D] (overwritten)  rstd: [n] (saved 1/sqrt(mean(x^2) + eps))
void rmsnorm_forward(int64_t n, int64_t D, float eps, std::span<const float> x,
                     std::span<const float> w, std::span<float> y, std::span<float> rstd);

// dy: [n, D] -> dx: [n, D] added to (it is a residual stream's gradient), dw: [D] added to.
void rmsnorm_backward(int64_t n, int64_t D, std::span<const float> x, std::span<const float> w,
                      std::span<const float> rstd, std::span<const float> dy, std::span<float> dx,
                      std::span<float> dw);

}  // namespace moe
