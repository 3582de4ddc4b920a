// The AVX2 + FMA quantized dot kernels (quant_kernels.h): the integer sums of each block in
// 256-bit registers (maddubs: unsigned weights times signed activations, or the sign trick
// for signed ones), then the generic kernel's fp32 steps on those sums, so the bits equal
// the generic set's.
#include "tensor/quant_blocks.h"
#include "tensor/quant_kernels.h"
#include "tensor/quant_x86.h"

namespace moe::quant_kernels {
namespace {

using namespace quant_blocks;

// Eight blocks a step: their integer sums side by side (lane_sums), times their scales
// (block_scales), added into lane b % 8.
template <QuantType kType>
MOE_AVX2 float dot_blocks32(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  constexpr int64_t w_bytes = kType == QuantType::Q8_0 ? q8_0::kBytes : q4_0::kBytes;
  const float* half_table = half_to_float_table();
  __m256 acc = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + kLanes <= blocks; b += kLanes) {
    __m256i sums[kLanes];
    for (int k = 0; k < kLanes; ++k)
      sums[k] = block32_products<kType>(w + (b + k) * w_bytes, a + (b + k) * q8_0::kBytes);
    const __m256 scales = block_scales(half_table, w + b * w_bytes, w_bytes, a + b * q8_0::kBytes);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(scales, _mm256_cvtepi32_ps(lane_sums(sums))));
  }
  return blocks32_total<kType>(acc, w, a, b, blocks);
}

// Q4_K (kFifthBit false) and Q5_K: per 64-value chunk, the two sub-blocks' unsigned values
// times the activations, each pair sum times its sub-block's 6-bit scale.
template <bool kFifthBit>
MOE_AVX2 float dot_k_affine(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  constexpr int64_t block_bytes = kFifthBit ? q5_k::kBytes : q4_k::kBytes;
  constexpr int64_t low_bits = kFifthBit ? q5_k::kQ : q4_k::kQ;
  const float* half_table = half_to_float_table();
  float total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * block_bytes;
    const uint8_t* ab = a + b * q8_k::kBytes;
    const KScales s = unpack_k_scales(wb + q4_k::kScales);
    __m256i qh = kFifthBit ? load256(wb + q5_k::kQh) : _mm256_setzero_si256();
    const __m256i scales = widen_scales(s.scale_words);
    __m256i acc = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      __m256i low, high;
      split_nibbles(load256(wb + low_bits + 32 * c), low, high);
      if constexpr (kFifthBit) {
        add_fifth_bits(qh, low, high);
        qh = _mm256_srli_epi16(qh, 2);
      }
      const uint8_t* aq = ab + q8_k::kQ + 64 * c;
      const __m256i p0 =
          _mm256_madd_epi16(_mm256_maddubs_epi16(low, load256(aq)), scale_broadcast(scales, 2 * c));
      const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(high, load256(aq + 32)),
                                           scale_broadcast(scales, 2 * c + 1));
      acc = _mm256_add_epi32(acc, _mm256_add_epi32(p0, p1));
    }
    const KSums sums = k_block_sums(acc, s.min_words, ab + q8_k::kBsums);
    total += k_affine_block_term(half_table, wb, load_f32(ab + q8_k::kD), sums.products, sums.mins);
  }
  return total;
}

}  // namespace

float dot_q8_0_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_blocks32<QuantType::Q8_0>(w, a, blocks);
}
float dot_q4_0_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_blocks32<QuantType::Q4_0>(w, a, blocks);
}
float dot_q4_k_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_k_affine<false>(w, a, blocks);
}
float dot_q5_k_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_k_affine<true>(w, a, blocks);
}

// Q6_K: the unsigned 6-bit values times the activations, each 16-value group's sum times its
// int8 scale; the values' offset of 32 comes off at the end through the activations' group
// sums (bsums): sum sc (q - 32) a = sum sc q a - 32 sum sc bsum.
MOE_AVX2 float dot_q6_k_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  const float* half_table = half_to_float_table();
  float total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * q6_k::kBytes;
    const uint8_t* ab = a + b * q8_k::kBytes;
    const auto* sc = reinterpret_cast<const int8_t*>(wb + q6_k::kScales);
    const __m256i scales =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
    // Each half's 8 scales in both 128-bit halves, for scale_pair.
    const __m256i half_scales[2] = {_mm256_permute2x128_si256(scales, scales, 0x00),
                                    _mm256_permute2x128_si256(scales, scales, 0x11)};
    // sum sc bsum, 8 lanes, taken off 32 times: the values' offset.
    const __m256i offsets = _mm256_madd_epi16(load256(ab + q8_k::kBsums), scales);
    __m256i acc = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offsets, 5));
    for (int half = 0; half < 2; ++half) {
      __m256i q[4];
      q6_k_half_values(wb + q6_k::kQl + 64 * half, wb + q6_k::kQh + 32 * half, q);
      for (int k = 0; k < 4; ++k) {  // run k: groups 8 half + 2k, + 1
        const __m256i products =
            _mm256_maddubs_epi16(q[k], load256(ab + q8_k::kQ + 128 * half + 32 * k));
        acc = _mm256_add_epi32(acc,
                               _mm256_madd_epi16(products, scale_pair(half_scales[half], 2 * k)));
      }
    }
    total += q6_k_block_term(half_table, wb, load_f32(ab + q8_k::kD), sum_lanes(acc));
  }
  return total;
}

}  // namespace moe::quant_kernels
