#pragma once
// exp for float that the compiler can vectorise (glibc's expf is a scalar call unless
// -ffast-math, which would also fold away our NaN checks). Cody-Waite range reduction
// x = n ln2 + r, |r| <= ln2 / 2, a degree-6 Taylor polynomial for e^r (truncation error
// below 1.2e-7 relative) and 2^n from the exponent bits. Relative error within 2.5e-7 of
// std::exp on [-87, 88] (tested); inputs below -87.3 give about 1e-38, above 88.7 inf, and NaN
// stays NaN. Used on the hot element-wise paths: SiLU, attention and vocabulary
// softmaxes.
#include <algorithm>
#include <bit>
#include <cstdint>

namespace moe {

inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  // Round x / ln2 to the nearest integer: adding 1.5 * 2^23 pushes the fraction out.
  // The integer then sits in the low mantissa bits (no float-to-int conversion, so a NaN
  // input is no undefined behaviour).
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const int32_t n_int = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(shifter);
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 +
                                          r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const float scale = std::bit_cast<float>((n_int + 127) << 23);
  return p * scale;
}

}  // namespace moe
