#pragma once
// The byte layouts of ggml's block formats (tensor/quant.h), shared by the quantizers and the
// dot-product kernels of every kernel set. Each format is a run of fixed-size blocks; the
// offsets below are bytes from a block's start, little-endian, with no padding, exactly as
// llama.cpp writes them into GGUF files. "fp16" is an IEEE half; values are reconstructed as
// fp32.
//
// Q8_0, 32 values in 34 bytes:
//   [0, 2) d: fp16 | [2, 34) q: 32 x int8                          x[i] = d * q[i]
// Q4_0, 32 values in 18 bytes:
//   [0, 2) d: fp16 | [2, 18) 16 bytes of 4-bit q                   x[i] = d * (q[i] - 8)
//   byte j holds value j in its low nibble and value j + 16 in its high nibble.
// Q4_K, 256 values in 144 bytes: eight sub-blocks of 32 values, each with a 6-bit scale sc[s]
// and a 6-bit min m[s] (scaled by the block's d and dmin):
//   [0, 2) d: fp16 | [2, 4) dmin: fp16 | [4, 16) sc, m packed | [16, 144) 4-bit q
//   x = d * sc[s] * q - dmin * m[s] for value i of sub-block s = i / 32.
//   The 12 bytes of scales: bytes 0-3 hold sc[0..3] in their low 6 bits, bytes 4-7 m[0..3];
//   sc[4..7] and m[4..7] are split: their low 4 bits are the low and high nibbles of bytes
//   8-11, their top 2 bits the top 2 bits of bytes 0-3 (sc) and 4-7 (m).
//   q: four 32-byte chunks; chunk c holds sub-block 2c in its low nibbles and 2c + 1 in its
//   high nibbles (value l of a sub-block in byte l).
// Q5_K, 256 values in 176 bytes: Q4_K with a fifth bit per value:
//   [0, 2) d | [2, 4) dmin | [4, 16) sc, m as Q4_K | [16, 48) qh | [48, 176) low 4 bits as Q4_K
//   bit s of qh[l] is bit 4 of value l of sub-block s.
// Q6_K, 256 values in 210 bytes: sixteen groups of 16 values, each with an int8 scale:
//   [0, 128) ql: low 4 bits | [128, 192) qh: high 2 bits | [192, 208) sc: 16 x int8 |
//   [208, 210) d: fp16                                 x = d * sc[i / 16] * (q[i] - 32)
//   Each half h (values 128h .. 128h + 127) uses ql[64h, 64h + 64) and qh[32h, 32h + 32):
//   value 128h + 32k + l (k < 4, l < 32) takes its low 4 bits from ql[64h + 32(k % 2) + l]
//   (low nibble for k < 2, high for k >= 2) and its high 2 bits from bits 2k, 2k + 1 of
//   qh[32h + l].
// Q8_K, 256 values in 292 bytes (activations only, never in files):
//   [0, 4) d: fp32 | [4, 260) q: 256 x int8 | [260, 292) bsums: 16 x int16
//   x[i] = d * q[i]; bsums[g] is the sum of q over values 16g .. 16g + 15 (for the mins).
#include <cstdint>
#include <cstring>
#include <vector>

namespace moe::quant_blocks {

inline constexpr int64_t kValues32 = 32;  // Q8_0, Q4_0
inline constexpr int64_t kValuesK = 256;  // Q4_K, Q5_K, Q6_K, Q8_K
inline constexpr int64_t kSubBlocks = 8;  // Q4_K, Q5_K: sub-blocks of 32
inline constexpr int64_t kGroups = 16;    // Q6_K scales, Q8_K bsums: groups of 16

namespace q8_0 {
inline constexpr int64_t kD = 0, kQ = 2, kBytes = 34;
}
namespace q4_0 {
inline constexpr int64_t kD = 0, kQ = 2, kBytes = 18;
}
namespace q4_k {
inline constexpr int64_t kD = 0, kDmin = 2, kScales = 4, kQ = 16, kBytes = 144;
}
namespace q5_k {
inline constexpr int64_t kD = 0, kDmin = 2, kScales = 4, kQh = 16, kQ = 48, kBytes = 176;
}
namespace q6_k {
inline constexpr int64_t kQl = 0, kQh = 128, kScales = 192, kD = 208, kBytes = 210;
}
namespace q8_k {
inline constexpr int64_t kD = 0, kQ = 4, kBsums = 260, kBytes = 292;
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline int16_t load_i16(const uint8_t* p) {
  int16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// fp16 -> fp32, exactly, without ever making an fp32 subnormal (arithmetic on those takes a
// slow path on many CPUs, and small weights' fp16 scales are often subnormal): a normal half
// or a special one moves its bits (exponent rebased from fp16's bias to fp32's), a subnormal
// one is its integer mantissa times 2^-24.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t exponent = h & 0x7C00u;
  float f;
  if (exponent == 0) {
    f = static_cast<float>(h & 0x3FFu) * 0x1p-24f;
  } else {
    uint32_t bits = (static_cast<uint32_t>(h & 0x7FFFu) << 13) + (uint32_t{127 - 15} << 23);
    if (exponent == 0x7C00u) bits |= 0x7F800000u;  // infinity, NaN
    std::memcpy(&f, &bits, sizeof f);
  }
  return (h & 0x8000u) ? -f : f;
}

// half_bits_to_float of every half, built on first use (256 KiB, of which the scales of real
// weights touch a few lines): the SIMD kernels read the blocks' scales with one load each.
inline const float* half_to_float_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = half_bits_to_float(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}

inline float load_half(const uint8_t* p) {
  return half_bits_to_float(load_u16(p));
}

// The 6-bit scales and mins of a Q4_K or Q5_K block (its 12 packed bytes), four bytes at a
// time: the packing keeps each of the 8 values in one byte lane of a 32-bit word (the layout
// above), so masks and shifts on words take all four at once (little-endian, as the files).
struct KScales {
  // Bytes 0-3 of scale_words hold scales 0-3, of scale_words[1] scales 4-7; min_words alike.
  uint32_t scale_words[2], min_words[2];
  int scale(int sub) const { return (scale_words[sub / 4] >> (8 * (sub % 4))) & 0xFF; }
  int min(int sub) const { return (min_words[sub / 4] >> (8 * (sub % 4))) & 0xFF; }
};
inline KScales unpack_k_scales(const uint8_t* packed) {
  uint32_t word[3];
  std::memcpy(word, packed, sizeof word);
  KScales s;
  s.scale_words[0] = word[0] & 0x3F3F3F3Fu;
  s.scale_words[1] = (word[2] & 0x0F0F0F0Fu) | (((word[0] >> 6) & 0x03030303u) << 4);
  s.min_words[0] = word[1] & 0x3F3F3F3Fu;
  s.min_words[1] = ((word[2] >> 4) & 0x0F0F0F0Fu) | (((word[1] >> 6) & 0x03030303u) << 4);
  return s;
}

// The mins' share of a Q4_K / Q5_K block's product: sum over s of m[s] times the activations'
// sum over sub-block s (two bsums of Q8_K).
inline int32_t k_min_products(const KScales& s, const uint8_t* q8k_block) {
  int32_t total = 0;
  for (int j = 0; j < kSubBlocks; ++j) {
    const int32_t activation_sum =
        load_i16(q8k_block + q8_k::kBsums + 4 * j) + load_i16(q8k_block + q8_k::kBsums + 4 * j + 2);
    total += s.min(j) * activation_sum;
  }
  return total;
}

// A K block's fp32 term from its exact integer sums, the same steps in every kernel set:
// Q4_K / Q5_K: (d_a * d) * sum - (d_a * dmin) * min_sum; Q6_K: (d_a * d) * sum. The fp16
// scales come from half_to_float_table().
inline float k_affine_block_term(const float* half_table, const uint8_t* weight_block,
                                 float activation_d, int32_t sum, int32_t min_sum) {
  const float d = half_table[load_u16(weight_block + q4_k::kD)];
  const float dmin = half_table[load_u16(weight_block + q4_k::kDmin)];
  return (activation_d * d) * static_cast<float>(sum) -
         (activation_d * dmin) * static_cast<float>(min_sum);
}
inline float q6_k_block_term(const float* half_table, const uint8_t* weight_block,
                             float activation_d, int32_t sum) {
  return (activation_d * half_table[load_u16(weight_block + q6_k::kD)]) * static_cast<float>(sum);
}

// The fp32 steps of a Q8_0 / Q4_0 product, the same in every kernel set: block b's integer
// sum (exact) times d_w * d_a goes into lane b % 8 of 8 fp32 lanes (so that 8 blocks' sums, side
// by side in a register, take one multiply and one add); at the end the lanes are added
// pairwise: (0 + 4), then (0 + 2), (0 + 1).
inline constexpr int kLanes = 8;
inline float lanes_total(float (&lane)[kLanes]) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) lane[j] += lane[j + width];
  return lane[0];
}

}  // namespace moe::quant_blocks
