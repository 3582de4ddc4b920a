// The K formats' quantizers (tensor/quant_blocks.h has the layouts). Each follows the search of
// ggml's reference quantizer (ggml-quants.c, make_qkx2_quants and make_qx_quants), written
// anew: every small group of values gets the scale (and, for Q4_K and Q5_K, the offset) with
// the least weighted squared error among a few candidate grids; then the group scales are
// themselves quantized against the block's fp16 scale, and the levels recomputed with the
// scales as stored, so the stored bytes reproduce what the search found as closely as they can.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/quant.h"
#include "tensor/quant_blocks.h"
#include "tensor/quant_kernels.h"

namespace moe::quant_kernels {
namespace {

using namespace quant_blocks;

// Magnitudes below this are zero (ggml's GROUP_MAX_EPS).
constexpr float kZeroGroup = 1e-15f;

// Ties to even, as ggml's nearest_int. Levels lie far inside +-2^22; a grid with a tiny span
// may ask beyond it (or, at 0 * infinity, for NaN), which saturates instead of overflowing.
int nearest(float v) {
  if (!(std::fabs(v) < 0x1p22f)) return v > 0 ? (1 << 22) : -(1 << 22);
  return static_cast<int>(std::nearbyint(v));
}

void store_half(uint8_t* p, float value) {
  const uint16_t h = float_to_half(value);
  std::memcpy(p, &h, sizeof h);
}

// x ~ scale * level + offset with level in [0, top] and offset <= 0.
struct AffineFit {
  float scale = 0, offset = 0;
};

// The fit of n <= 32 values with the least sum of weight * error^2. Candidates: levels from
// a grid of `top` + shift steps from the best offset so far up to max(x), shift = first_shift +
// k * step (k = 0 .. steps); for each, scale and offset solve the weighted least squares for
// those levels (offset clamped at 0). The first candidate is the plain grid over
// [min(x, 0), max(x)] with its own scale; a better fit moves the later grids' origin to its
// offset, as ggml's search does.
AffineFit fit_affine(const float* x, const float* weight, int n, int top, float first_shift,
                     float step, int steps, uint8_t* levels) {
  float lo = std::min(0.0f, *std::min_element(x, x + n)), hi = *std::max_element(x, x + n);
  if (hi == lo) {
    std::fill(levels, levels + n, 0);
    return {0, lo};
  }
  auto level_at = [&](float inverse, float origin, int i) {
    return static_cast<uint8_t>(std::clamp(nearest(inverse * (x[i] - origin)), 0, top));
  };
  auto error_of = [&](const uint8_t* l, float scale, float offset) {
    float error = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = scale * l[i] + offset - x[i];
      error += weight[i] * diff * diff;
    }
    return error;
  };
  AffineFit best{(hi - lo) / top, lo};
  for (int i = 0; i < n; ++i) levels[i] = level_at(top / (hi - lo), lo, i);
  float best_error = error_of(levels, best.scale, best.offset);

  float sum_w = 0, sum_wx = 0;
  for (int i = 0; i < n; ++i) {
    sum_w += weight[i];
    sum_wx += weight[i] * x[i];
  }
  uint8_t trial[32];
  for (int k = 0; k <= steps && hi > best.offset; ++k) {
    const float inverse = (top + first_shift + step * k) / (hi - best.offset);
    float sum_wl = 0, sum_wll = 0, sum_wlx = 0;
    for (int i = 0; i < n; ++i) {
      trial[i] = level_at(inverse, best.offset, i);
      sum_wl += weight[i] * trial[i];
      sum_wll += weight[i] * trial[i] * trial[i];
      sum_wlx += weight[i] * trial[i] * x[i];
    }
    const float det = sum_w * sum_wll - sum_wl * sum_wl;
    if (det <= 0) continue;
    AffineFit fit{(sum_w * sum_wlx - sum_wx * sum_wl) / det,
                  (sum_wll * sum_wx - sum_wl * sum_wlx) / det};
    if (fit.offset > 0) fit = {sum_wlx / sum_wll, 0};  // the offset must not be positive
    const float error = error_of(trial, fit.scale, fit.offset);
    if (error < best_error) {
      best_error = error;
      best = fit;
      std::copy(trial, trial + n, levels);
    }
  }
  return best;
}

// Q4_K and Q5_K: 8 sub-blocks of 32 values, levels in [0, top] (15 or 31). Returns the levels
// as stored; writes d, dmin and the 12 bytes of scales.
void quantize_k_affine(const float* x, int top, float first_shift, int steps, uint8_t* block,
                       uint8_t (&levels)[kValuesK]) {
  AffineFit fits[kSubBlocks];
  float max_scale = 0, max_min = 0;
  for (int s = 0; s < kSubBlocks; ++s) {
    const float* xs = x + 32 * s;
    // ggml's weighting: a value's weight grows with its magnitude over the group's RMS.
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float rms = std::sqrt(sum_x2 / 32);
    float weight[32];
    for (int l = 0; l < 32; ++l) weight[l] = rms + std::fabs(xs[l]);
    fits[s] = fit_affine(xs, weight, 32, top, first_shift, 0.1f, steps, levels + 32 * s);
    max_scale = std::max(max_scale, fits[s].scale);
    max_min = std::max(max_min, -fits[s].offset);
  }
  // The sub-block scales and mins as 6-bit multiples of d = max_scale / 63, dmin = max_min / 63.
  const float to_scale = max_scale > 0 ? 63 / max_scale : 0,
              to_min = max_min > 0 ? 63 / max_min : 0;
  uint8_t scale6[kSubBlocks], min6[kSubBlocks];
  for (int s = 0; s < kSubBlocks; ++s) {
    scale6[s] = static_cast<uint8_t>(std::clamp(nearest(to_scale * fits[s].scale), 0, 63));
    min6[s] = static_cast<uint8_t>(std::clamp(nearest(to_min * -fits[s].offset), 0, 63));
  }
  uint8_t* packed = block + q4_k::kScales;
  for (int j = 0; j < 4; ++j) {
    packed[j] = static_cast<uint8_t>(scale6[j] | ((scale6[j + 4] >> 4) << 6));
    packed[j + 4] = static_cast<uint8_t>(min6[j] | ((min6[j + 4] >> 4) << 6));
    packed[j + 8] = static_cast<uint8_t>((scale6[j + 4] & 0xF) | ((min6[j + 4] & 0xF) << 4));
  }
  store_half(block + q4_k::kD, max_scale / 63);
  store_half(block + q4_k::kDmin, max_min / 63);
  // The levels again, against the scales as stored.
  const float d = load_half(block + q4_k::kD), dmin = load_half(block + q4_k::kDmin);
  for (int s = 0; s < kSubBlocks; ++s) {
    const float scale = d * scale6[s], offset = dmin * min6[s];
    if (scale == 0) continue;
    for (int l = 0; l < 32; ++l)
      levels[32 * s + l] =
          static_cast<uint8_t>(std::clamp(nearest((x[32 * s + l] + offset) / scale), 0, top));
  }
}

// Q6_K's groups: x ~ scale * level with level in [-32, 31]; the scale that maximises
// (sum w x l)^2 / (sum w l^2) (the least weighted error for its levels) with w = x^2, over
// grids that map the largest magnitude to -(32 + k / 10), k = -9 .. 9 (n <= 16).
float fit_symmetric(const float* x, int n, int8_t* levels) {
  constexpr int kTop = 32;
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < kZeroGroup) {
    std::fill(levels, levels + n, 0);
    return 0;
  }
  // A candidate wins when (sum w x l)^2 / (sum w l^2) beats the best's scale * (sum w x l),
  // compared without the division (as ggml compares them: near-ties then go the same way).
  float best_scale = 0, best_product = 0;
  for (int k = 0; k <= 18; ++k) {
    const int shift = k == 0 ? 0 : k <= 9 ? k - 10 : k - 9;  // 0, then -9 .. -1, 1 .. 9
    const float inverse = -(kTop + 0.1f * shift) / max;
    int8_t trial[16];
    float sum_wxl = 0, sum_wll = 0;
    for (int i = 0; i < n; ++i) {
      trial[i] = static_cast<int8_t>(std::clamp(nearest(inverse * x[i]), -kTop, kTop - 1));
      const float w = x[i] * x[i];
      sum_wxl += w * x[i] * trial[i];
      sum_wll += w * trial[i] * trial[i];
    }
    if (sum_wll <= 0) continue;
    if (k == 0 || sum_wxl * sum_wxl > best_product * sum_wll) {
      best_scale = sum_wxl / sum_wll;
      best_product = best_scale * sum_wxl;
      std::copy(trial, trial + n, levels);
    }
  }
  return best_scale;
}

}  // namespace

void quantize_block_q4_k(const float* x, uint8_t* block) {
  uint8_t levels[kValuesK];
  quantize_k_affine(x, 15, -1.0f, 20, block, levels);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      block[q4_k::kQ + 32 * c + l] =
          static_cast<uint8_t>(levels[64 * c + l] | (levels[64 * c + 32 + l] << 4));
}

void quantize_block_q5_k(const float* x, uint8_t* block) {
  uint8_t levels[kValuesK];
  quantize_k_affine(x, 31, -0.5f, 15, block, levels);
  uint8_t* qh = block + q5_k::kQh;
  std::fill(qh, qh + 32, 0);
  for (int s = 0; s < kSubBlocks; ++s)
    for (int l = 0; l < 32; ++l) qh[l] |= static_cast<uint8_t>((levels[32 * s + l] >> 4) << s);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      block[q5_k::kQ + 32 * c + l] =
          static_cast<uint8_t>((levels[64 * c + l] & 0xF) | ((levels[64 * c + 32 + l] & 0xF) << 4));
}

void quantize_block_q6_k(const float* x, uint8_t* block) {
  int8_t levels[kValuesK];  // in [-32, 31]
  float scales[kGroups];
  float max_scale = 0;
  for (int g = 0; g < kGroups; ++g) {
    scales[g] = fit_symmetric(x + 16 * g, 16, levels + 16 * g);
    if (std::fabs(scales[g]) > std::fabs(max_scale)) max_scale = scales[g];
  }
  std::fill(block, block + q6_k::kBytes, 0);
  if (std::fabs(max_scale) < kZeroGroup) return;  // all zero: d = 0
  // Group scales as int8 multiples of d = max_scale / -128 (the largest one stored as -128).
  const float to_scale = -128 / max_scale;
  store_half(block + q6_k::kD, 1 / to_scale);
  auto* sc = reinterpret_cast<int8_t*>(block + q6_k::kScales);
  for (int g = 0; g < kGroups; ++g)
    sc[g] = static_cast<int8_t>(std::clamp(nearest(to_scale * scales[g]), -128, 127));
  const float d = load_half(block + q6_k::kD);
  for (int g = 0; g < kGroups; ++g) {
    const float scale = d * sc[g];
    if (scale == 0) continue;
    for (int i = 16 * g; i < 16 * g + 16; ++i)
      levels[i] = static_cast<int8_t>(std::clamp(nearest(x[i] / scale), -32, 31));
  }
  for (int half = 0; half < 2; ++half) {
    uint8_t* ql = block + q6_k::kQl + 64 * half;
    uint8_t* qh = block + q6_k::kQh + 32 * half;
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const int q = levels[128 * half + 32 * k + l] + 32;  // 0 .. 63
        ql[32 * (k % 2) + l] |= static_cast<uint8_t>((q & 0xF) << (4 * (k / 2)));
        qh[l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
      }
  }
}

}  // namespace moe::quant_kernels
