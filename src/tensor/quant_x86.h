#pragma once
// AVX2 steps shared by the AVX2 and AVX-512 quantized dot kernels (quant_avx2.cpp,
// quant_avx512.cpp). Compiled for AVX2 whatever the build's -march: only kernels that the
// caller picked for a CPU with AVX2 (tensor/cpu.h) call them, and the AVX-512 kernels inline
// them (their target includes AVX2).
#include <immintrin.h>

#include <cstdint>

#include "tensor/quant.h"
#include "tensor/quant_blocks.h"

#define MOE_AVX2 __attribute__((target("avx2,fma")))

namespace moe::quant_kernels {

// 32 signed bytes times 32 signed bytes -> 8 int32 lanes, each the sum of 4 products.
// maddubs multiplies unsigned by signed bytes, so x's sign moves onto y: |x| * (sign(x) y).
// Exact as long as y holds no -128 (activations are quantized to [-127, 127]): a pair of
// products is then at most 2 * 128 * 127 < 2^15.
MOE_AVX2 inline __m256i signed_products(__m256i x, __m256i y) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// Lane k of the result: the sum of v[k]'s 8 lanes.
MOE_AVX2 inline __m256i lane_sums(const __m256i (&v)[8]) {
  const __m256i s01 = _mm256_hadd_epi32(v[0], v[1]), s23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i s45 = _mm256_hadd_epi32(v[4], v[5]), s67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i low = _mm256_hadd_epi32(s01, s23), high = _mm256_hadd_epi32(s45, s67);
  // Each 128-bit half of `low` holds v[0..3]'s sums over that half's 4 lanes; `high` v[4..7]'s.
  return _mm256_add_epi32(_mm256_permute2x128_si256(low, high, 0x20),
                          _mm256_permute2x128_si256(low, high, 0x31));
}

MOE_AVX2 inline int32_t sum_lanes(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

MOE_AVX2 inline __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// d_w * d_a of 8 consecutive Q8_0 / Q4_0 blocks (the weights' blocks w_stride bytes apart),
// as the generic kernel computes each: fp16 through a table of all 65,536 halves (one load
// each: converting 8 in registers, or with scalar arithmetic, measured slower), multiplied in
// fp32.
MOE_AVX2 inline __m256 block_scales(const float* half_table, const uint8_t* w, int64_t w_stride,
                                    const uint8_t* a) {
  alignas(32) float scale[8];
  for (int k = 0; k < 8; ++k)
    scale[k] = half_table[quant_blocks::load_u16(w + k * w_stride)] *
               half_table[quant_blocks::load_u16(a + k * quant_blocks::q8_0::kBytes)];
  return _mm256_load_ps(scale);
}

// A Q4_0 block's 16 bytes of nibbles -> its 32 values in order, unsigned (0 .. 15, the value
// plus 8).
MOE_AVX2 inline __m256i q4_0_nibbles(const uint8_t* q) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m256i nibbles = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  return _mm256_and_si256(nibbles, _mm256_set1_epi8(0xF));
}

// A Q8_0 or Q4_0 weight block against a Q8_0 activation block: 8 int32 lanes (lane j: values
// 4j .. 4j + 3).
template <QuantType kType>
MOE_AVX2 inline __m256i block32_products(const uint8_t* w, const uint8_t* a) {
  const __m256i activations = load256(a + quant_blocks::q8_0::kQ);
  if constexpr (kType == QuantType::Q8_0)
    return signed_products(load256(w + quant_blocks::q8_0::kQ), activations);
  // (q - 8) a = q a - 8 a: the unsigned nibbles straight into maddubs (pairs within +-2^12).
  const __m256i pairs =
      _mm256_sub_epi16(_mm256_maddubs_epi16(q4_0_nibbles(w + quant_blocks::q4_0::kQ), activations),
                       _mm256_maddubs_epi16(_mm256_set1_epi8(8), activations));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// The end of a Q8_0 / Q4_0 dot whose full steps of kLanes blocks are in `acc` (lane j: blocks
// j, j + 8, ...): blocks `done`.. `blocks` added one by one into lane b % 8, then the lanes
// summed in the generic kernel's order.
template <QuantType kType>
MOE_AVX2 inline float blocks32_total(__m256 acc, const uint8_t* w, const uint8_t* a, int64_t done,
                                     int64_t blocks) {
  using namespace quant_blocks;
  constexpr int64_t w_bytes = kType == QuantType::Q8_0 ? q8_0::kBytes : q4_0::kBytes;
  float lane[kLanes];
  _mm256_storeu_ps(lane, acc);
  for (int64_t b = done; b < blocks; ++b) {
    const uint8_t* wb = w + b * w_bytes;
    const uint8_t* ab = a + b * q8_0::kBytes;
    const int32_t sum = sum_lanes(block32_products<kType>(wb, ab));
    lane[b % kLanes] += (load_half(wb) * load_half(ab)) * static_cast<float>(sum);
  }
  return lanes_total(lane);
}

// The low and high nibbles of 32 bytes (sub-blocks 2c and 2c + 1 of a Q4_K / Q5_K chunk).
MOE_AVX2 inline void split_nibbles(__m256i packed, __m256i& low, __m256i& high) {
  const __m256i mask = _mm256_set1_epi8(0xF);
  low = _mm256_and_si256(packed, mask);
  high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
}

// Q5_K: bit 4 of the values of sub-blocks 2c and 2c + 1 from qh already shifted right by 2c
// (bits cross bytes in the 16-bit shifts only above bit 0, which is all that is kept).
MOE_AVX2 inline void add_fifth_bits(__m256i qh_shifted, __m256i& low, __m256i& high) {
  const __m256i one = _mm256_set1_epi8(1);
  low = _mm256_or_si256(low, _mm256_slli_epi16(_mm256_and_si256(qh_shifted, one), 4));
  high = _mm256_or_si256(
      high, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh_shifted, 1), one), 4));
}

// Eight 6-bit scales (two words of KScales) as int16, the same eight in both 128-bit halves.
MOE_AVX2 inline __m256i widen_scales(const uint32_t (&words)[2]) {
  const __m128i bytes = _mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(words[0])),
                                         static_cast<int>(words[1]), 1);
  return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(bytes));
}

// The shuffle control that copies int16 element e (its two bytes) of a 128-bit half.
inline int16_t int16_element(int e) {
  return static_cast<int16_t>(((2 * e + 1) << 8) | (2 * e));
}

// From eight int16 scales in both halves: scale e in every lane.
MOE_AVX2 inline __m256i scale_broadcast(__m256i scales, int e) {
  return _mm256_shuffle_epi8(scales, _mm256_set1_epi16(int16_element(e)));
}

// From eight int16 scales in both halves: lanes 0-7 get scale e, lanes 8-15 scale e + 1 (the
// madd factors of a register whose two 16-byte halves belong to groups e and e + 1).
MOE_AVX2 inline __m256i scale_pair(__m256i scales, int e) {
  return _mm256_shuffle_epi8(scales, _mm256_set_m128i(_mm_set1_epi16(int16_element(e + 1)),
                                                      _mm_set1_epi16(int16_element(e))));
}

// A Q4_K / Q5_K block's two integer sums at once: the scaled products (acc's 8 lanes) and the
// mins' share, as k_min_products (tensor/quant_blocks.h): the 16 bsums added in pairs (one per
// sub-block; at most 32 * 127, so int16 holds them) times the 8 mins.
struct KSums {
  int32_t products, mins;
};
MOE_AVX2 inline KSums k_block_sums(__m256i acc, const uint32_t (&min_words)[2],
                                   const uint8_t* bsums) {
  const __m256i b = load256(bsums);
  const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  const __m128i mins = _mm_cvtepu8_epi16(_mm_insert_epi32(
      _mm_cvtsi32_si128(static_cast<int>(min_words[0])), static_cast<int>(min_words[1]), 1));
  const __m128i min_products = _mm_madd_epi16(pairs, mins);
  const __m128i products =
      _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  // [p0 + p1, p2 + p3, m0 + m1, m2 + m3], then [p, m, p, m].
  const __m128i halves = _mm_hadd_epi32(products, min_products);
  const __m128i totals = _mm_hadd_epi32(halves, halves);
  return {_mm_cvtsi128_si32(totals), _mm_extract_epi32(totals, 1)};
}

// Q6_K: the 6-bit values (0 .. 63) of one half's four 32-value runs, from its 64 bytes of ql
// and 32 of qh (run k: low bits from ql[32 (k % 2) ..] nibble k / 2, high bits from qh's bits
// 2k, 2k + 1).
MOE_AVX2 inline void q6_k_half_values(const uint8_t* ql, const uint8_t* qh, __m256i (&q)[4]) {
  const __m256i low = _mm256_set1_epi8(0xF), high = _mm256_set1_epi8(0x30);
  const __m256i ql0 = load256(ql), ql1 = load256(ql + 32), h = load256(qh);
  q[0] =
      _mm256_or_si256(_mm256_and_si256(ql0, low), _mm256_and_si256(_mm256_slli_epi16(h, 4), high));
  q[1] =
      _mm256_or_si256(_mm256_and_si256(ql1, low), _mm256_and_si256(_mm256_slli_epi16(h, 2), high));
  q[2] =
      _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), _mm256_and_si256(h, high));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                         _mm256_and_si256(_mm256_srli_epi16(h, 2), high));
}

}  // namespace moe::quant_kernels
