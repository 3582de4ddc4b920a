// The AVX-512 (F, BW) quantized dot kernels (quant_kernels.h): the AVX2 kernels' steps on
// 512-bit registers, two 32-value blocks or one 64-value chunk at a time; the same integer
// sums, and then the generic kernel's fp32 steps, so the bits equal the generic set's.

// GCC 12's AVX-512 intrinsics start many results from an "uninitialised" register
// (_mm512_undefined_*) and warn wherever they are inlined: the warning is about the header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "tensor/quant_blocks.h"
#include "tensor/quant_kernels.h"
#include "tensor/quant_x86.h"

// Compiled for AVX-512 whatever the build's -march: dot_kernel picks these only when
// kernel_set() is Avx512, which the CPU then supports.
#define MOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace moe::quant_kernels {
namespace {

using namespace quant_blocks;

MOE_AVX512 inline __m512i join(__m256i low, __m256i high) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

// signed_products on 64 bytes: 16 int32 lanes. AVX-512 has no sign_epi8: y is negated where x
// is negative, and |x| multiplies it as unsigned bytes.
MOE_AVX512 inline __m512i signed_products512(__m512i x, __m512i y) {
  const __mmask64 negative = _mm512_movepi8_mask(x);
  const __m512i signed_y = _mm512_mask_sub_epi8(y, negative, _mm512_setzero_si512(), y);
  return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(x), signed_y),
                           _mm512_set1_epi16(1));
}

// Two consecutive Q8_0 or Q4_0 blocks against two Q8_0 activation blocks: block_products'
// lanes of the first in the low half, of the second in the high half.
template <QuantType kType>
MOE_AVX512 inline __m512i pair_products(const uint8_t* w, const uint8_t* a) {
  const __m512i activations = join(load256(a + q8_0::kQ), load256(a + q8_0::kBytes + q8_0::kQ));
  if constexpr (kType == QuantType::Q8_0)
    return signed_products512(join(load256(w + q8_0::kQ), load256(w + q8_0::kBytes + q8_0::kQ)),
                              activations);
  const __m512i nibbles =
      join(q4_0_nibbles(w + q4_0::kQ), q4_0_nibbles(w + q4_0::kBytes + q4_0::kQ));
  const __m512i pairs = _mm512_sub_epi16(_mm512_maddubs_epi16(nibbles, activations),
                                         _mm512_maddubs_epi16(_mm512_set1_epi8(8), activations));
  return _mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
}

// Eight blocks a step, two per register; their sums side by side (lane_sums), scaled and
// added into lane b % 8 as the generic kernel does.
template <QuantType kType>
MOE_AVX512 float dot_blocks32(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  constexpr int64_t w_bytes = kType == QuantType::Q8_0 ? q8_0::kBytes : q4_0::kBytes;
  const float* half_table = half_to_float_table();
  __m256 acc = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + kLanes <= blocks; b += kLanes) {
    __m256i sums[kLanes];
    for (int k = 0; k < kLanes; k += 2) {
      const __m512i products =
          pair_products<kType>(w + (b + k) * w_bytes, a + (b + k) * q8_0::kBytes);
      sums[k] = _mm512_castsi512_si256(products);
      sums[k + 1] = _mm512_extracti64x4_epi64(products, 1);
    }
    const __m256 scales = block_scales(half_table, w + b * w_bytes, w_bytes, a + b * q8_0::kBytes);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(scales, _mm256_cvtepi32_ps(lane_sums(sums))));
  }
  return blocks32_total<kType>(acc, w, a, b, blocks);
}

// Q4_K (kFifthBit false) and Q5_K: a 64-value chunk per register, its two sub-blocks in the
// two halves, each half's pair sums times its sub-block's scale.
template <bool kFifthBit>
MOE_AVX512 float dot_k_affine(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  constexpr int64_t block_bytes = kFifthBit ? q5_k::kBytes : q4_k::kBytes;
  constexpr int64_t low_bits = kFifthBit ? q5_k::kQ : q4_k::kQ;
  const float* half_table = half_to_float_table();
  float total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * block_bytes;
    const uint8_t* ab = a + b * q8_k::kBytes;
    const KScales s = unpack_k_scales(wb + q4_k::kScales);
    __m256i qh = kFifthBit ? load256(wb + q5_k::kQh) : _mm256_setzero_si256();
    const __m256i scales8 = widen_scales(s.scale_words);
    __m512i acc = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      __m256i low, high;
      split_nibbles(load256(wb + low_bits + 32 * c), low, high);
      if constexpr (kFifthBit) {
        add_fifth_bits(qh, low, high);
        qh = _mm256_srli_epi16(qh, 2);
      }
      const __m512i activations = _mm512_loadu_si512(ab + q8_k::kQ + 64 * c);
      const __m512i scales =
          join(scale_broadcast(scales8, 2 * c), scale_broadcast(scales8, 2 * c + 1));
      acc = _mm512_add_epi32(
          acc, _mm512_madd_epi16(_mm512_maddubs_epi16(join(low, high), activations), scales));
    }
    const __m256i acc8 =  // the 16 lanes folded to 8 (exact): k_block_sums takes 8
        _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
    const KSums sums = k_block_sums(acc8, s.min_words, ab + q8_k::kBsums);
    total += k_affine_block_term(half_table, wb, load_f32(ab + q8_k::kD), sums.products, sums.mins);
  }
  return total;
}

// The group (0 .. 3) of each 16-bit lane of a 64-value run: 8 pair sums per 16-value group.
alignas(64) constexpr int16_t kLaneGroup[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};

}  // namespace

float dot_q8_0_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_blocks32<QuantType::Q8_0>(w, a, blocks);
}
float dot_q4_0_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_blocks32<QuantType::Q4_0>(w, a, blocks);
}
float dot_q4_k_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_k_affine<false>(w, a, blocks);
}
float dot_q5_k_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_k_affine<true>(w, a, blocks);
}

// Q6_K as the AVX2 kernel does it (the offset of 32 through the bsums), 64 values a register:
// the 16 int8 group scales widened once, then spread over each run's 32 lanes (vpermw).
MOE_AVX512 float dot_q6_k_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  const __m512i lane_group = _mm512_load_si512(kLaneGroup);
  const float* half_table = half_to_float_table();
  float total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * q6_k::kBytes;
    const uint8_t* ab = a + b * q8_k::kBytes;
    const auto* sc = reinterpret_cast<const int8_t*>(wb + q6_k::kScales);
    const __m256i scales16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
    const __m512i group_scales = _mm512_castsi256_si512(scales16);  // lanes 16-31 unused
    // sum sc bsum, taken off 32 times: the values' offset.
    const __m256i offsets = _mm256_madd_epi16(load256(ab + q8_k::kBsums), scales16);
    __m512i acc = join(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offsets, 5)),
                       _mm256_setzero_si256());
    for (int half = 0; half < 2; ++half) {
      __m256i q[4];
      q6_k_half_values(wb + q6_k::kQl + 64 * half, wb + q6_k::kQh + 32 * half, q);
      for (int r = 0; r < 2; ++r) {  // runs 2r, 2r + 1: groups 8 half + 4r .. + 3
        const __m512i run_scales = _mm512_permutexvar_epi16(
            _mm512_add_epi16(lane_group, _mm512_set1_epi16(static_cast<int16_t>(8 * half + 4 * r))),
            group_scales);
        const __m512i activations = _mm512_loadu_si512(ab + q8_k::kQ + 128 * half + 64 * r);
        const __m512i products = _mm512_maddubs_epi16(join(q[2 * r], q[2 * r + 1]), activations);
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(products, run_scales));
      }
    }
    total += q6_k_block_term(half_table, wb, load_f32(ab + q8_k::kD), _mm512_reduce_add_epi32(acc));
  }
  return total;
}

}  // namespace moe::quant_kernels
