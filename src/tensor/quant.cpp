// The block formats (tensor/quant.h): their sizes, dequantization, and the quantizers of the
// 32-value formats and of the activations (the K formats' searches: quant_k_quantize.cpp).
#include "tensor/quant.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <string>

#include "tensor/error.h"
#include "tensor/quant_blocks.h"
#include "tensor/quant_kernels.h"

namespace moe {
namespace {

using namespace quant_blocks;

constexpr std::array<QuantLayout, 6> kLayouts = {{
    {"q4_0", kValues32, q4_0::kBytes},
    {"q8_0", kValues32, q8_0::kBytes},
    {"q4_K", kValuesK, q4_k::kBytes},
    {"q5_K", kValuesK, q5_k::kBytes},
    {"q6_K", kValuesK, q6_k::kBytes},
    {"q8_K", kValuesK, q8_k::kBytes},
}};

size_t layout_index(QuantType type) {
  switch (type) {
    case QuantType::Q4_0:
      return 0;
    case QuantType::Q8_0:
      return 1;
    case QuantType::Q4_K:
      return 2;
    case QuantType::Q5_K:
      return 3;
    case QuantType::Q6_K:
      return 4;
    case QuantType::Q8_K:
      return 5;
  }
  throw Error("quantized type id " + std::to_string(static_cast<uint32_t>(type)) +
              " is not one of q4_0, q8_0, q4_K, q5_K, q6_K, q8_K");
}

void store_half(uint8_t* p, float value) {
  const uint16_t h = float_to_half(value);
  std::memcpy(p, &h, sizeof h);
}

// ---- Dequantization: one block of each format -> its values.

void dequantize_q8_0(const uint8_t* block, float* out) {
  const float d = load_half(block + q8_0::kD);
  const auto* q = reinterpret_cast<const int8_t*>(block + q8_0::kQ);
  for (int i = 0; i < kValues32; ++i) out[i] = d * q[i];
}

void dequantize_q4_0(const uint8_t* block, float* out) {
  const float d = load_half(block + q4_0::kD);
  const uint8_t* q = block + q4_0::kQ;
  for (int j = 0; j < kValues32 / 2; ++j) {
    out[j] = d * ((q[j] & 0xF) - 8);
    out[j + 16] = d * ((q[j] >> 4) - 8);
  }
}

// Q4_K and Q5_K: value l of sub-block s is d * sc[s] * q - dmin * m[s]; `fifth_bits` is Q5_K's
// qh (null for Q4_K).
void dequantize_k_affine(const uint8_t* block, const uint8_t* low_bits, const uint8_t* fifth_bits,
                         float* out) {
  const float d = load_half(block + q4_k::kD), dmin = load_half(block + q4_k::kDmin);
  const KScales s = unpack_k_scales(block + q4_k::kScales);
  for (int sub = 0; sub < kSubBlocks; ++sub) {
    const uint8_t* chunk = low_bits + 32 * (sub / 2);
    const int shift = 4 * (sub % 2);
    const float scale = d * s.scale(sub), offset = dmin * s.min(sub);
    for (int l = 0; l < 32; ++l) {
      int q = (chunk[l] >> shift) & 0xF;
      if (fifth_bits) q |= ((fifth_bits[l] >> sub) & 1) << 4;
      out[32 * sub + l] = scale * q - offset;
    }
  }
}

void dequantize_q6_k(const uint8_t* block, float* out) {
  const float d = load_half(block + q6_k::kD);
  const auto* sc = reinterpret_cast<const int8_t*>(block + q6_k::kScales);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = block + q6_k::kQl + 64 * half;
    const uint8_t* qh = block + q6_k::kQh + 32 * half;
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const int low = (ql[32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
        const int high = (qh[l] >> (2 * k)) & 3;
        const int i = 128 * half + 32 * k + l;
        out[i] = d * sc[i / 16] * ((low | (high << 4)) - 32);
      }
  }
}

void dequantize_q8_k(const uint8_t* block, float* out) {
  const float d = load_f32(block + q8_k::kD);
  const auto* q = reinterpret_cast<const int8_t*>(block + q8_k::kQ);
  for (int i = 0; i < kValuesK; ++i) out[i] = d * q[i];
}

// ---- Quantization of the 32-value formats and of Q8_K, rounding as ggml's reference does.

// 1 / d, or 0 where d is 0 or so small (fp32-subnormal) that 1 / d overflows: the stored fp16
// scale is then 0 anyway, and the quants 0 (ggml's reference would convert infinities).
float inverse_of(float d) {
  const float inverse = d != 0 ? 1.0f / d : 0.0f;
  return std::isinf(inverse) ? 0.0f : inverse;
}

// d = max|x| / 127; q = round(x / d), halves away from zero (roundf).
void quantize_q8_0(const float* x, uint8_t* block) {
  float amax = 0;
  for (int i = 0; i < kValues32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127, inverse = inverse_of(d);
  store_half(block + q8_0::kD, d);
  auto* q = reinterpret_cast<int8_t*>(block + q8_0::kQ);
  for (int i = 0; i < kValues32; ++i) q[i] = static_cast<int8_t>(std::roundf(x[i] * inverse));
}

// Activations in Q8_0 as ggml's x86 CPU backend quantizes them (its AVX code, which llama.cpp
// runs here): q = nearest-even(x * (127 / max|x|)). Its reference quantizer above (weights)
// multiplies by 1 / (max|x| / 127) and rounds halves away: a quant differs by one now and then,
// enough to move a model's logits by a visible amount after a few layers.
void quantize_q8_0_activations(const float* x, uint8_t* block) {
  float amax = 0;
  for (int i = 0; i < kValues32; ++i) amax = std::max(amax, std::fabs(x[i]));
  store_half(block + q8_0::kD, amax / 127);
  const float inverse = amax != 0 ? 127.0f / amax : 0.0f;
  auto* q = reinterpret_cast<int8_t*>(block + q8_0::kQ);
  for (int i = 0; i < kValues32; ++i) q[i] = static_cast<int8_t>(std::nearbyint(x[i] * inverse));
}

// The value of largest magnitude (the first such), with its sign.
float signed_absmax(const float* x, int n) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  return max;
}

// d = max / -8, so the value of largest magnitude maps to level 0 (-8 after the offset) and
// the others to [0, 15]: q = trunc(x / d + 8.5), at most 15.
void quantize_q4_0(const float* x, uint8_t* block) {
  const float d = signed_absmax(x, kValues32) / -8, inverse = inverse_of(d);
  store_half(block + q4_0::kD, d);
  auto level = [&](float v) {
    return static_cast<uint8_t>(
        std::min(15, static_cast<int>(static_cast<int8_t>(v * inverse + 8.5f))));
  };
  for (int j = 0; j < kValues32 / 2; ++j)
    block[q4_0::kQ + j] = level(x[j]) | static_cast<uint8_t>(level(x[j + 16]) << 4);
}

// d = max / -127 in fp32 (not rounded to fp16), q = nearest(x / d) in [-127, 127], with the
// sums of each group of 16 for the K formats' mins.
void quantize_q8_k(const float* x, uint8_t* block) {
  const float max = signed_absmax(x, kValuesK);
  auto* q = reinterpret_cast<int8_t*>(block + q8_k::kQ);
  float inverse = max != 0 ? -127.0f / max : 0.0f;
  if (std::isinf(inverse)) inverse = 0;  // a subnormal max: all quants 0, d 0
  for (int i = 0; i < kValuesK; ++i)
    q[i] = static_cast<int8_t>(std::min(127, static_cast<int>(std::nearbyint(inverse * x[i]))));
  for (int g = 0; g < kGroups; ++g) {
    int16_t sum = 0;
    for (int i = 0; i < 16; ++i) sum = static_cast<int16_t>(sum + q[16 * g + i]);
    std::memcpy(block + q8_k::kBsums + 2 * g, &sum, sizeof sum);
  }
  const float d = inverse != 0 ? 1.0f / inverse : 0.0f;
  std::memcpy(block + q8_k::kD, &d, sizeof d);
}

void quantize_block(QuantType type, const float* x, uint8_t* block) {
  switch (type) {
    case QuantType::Q8_0:
      return quantize_q8_0(x, block);
    case QuantType::Q4_0:
      return quantize_q4_0(x, block);
    case QuantType::Q4_K:
      return quant_kernels::quantize_block_q4_k(x, block);
    case QuantType::Q5_K:
      return quant_kernels::quantize_block_q5_k(x, block);
    case QuantType::Q6_K:
      return quant_kernels::quantize_block_q6_k(x, block);
    case QuantType::Q8_K:
      return quantize_q8_k(x, block);
  }
}

void check_sizes(QuantType type, size_t values, size_t bytes, const char* what) {
  const int64_t want = quant_row_bytes(type, static_cast<int64_t>(values));
  if (static_cast<int64_t>(bytes) != want)
    throw Error(std::string(what) + ": " + std::to_string(values) + " values of " +
                std::string(quant_layout(type).name) + " take " + std::to_string(want) +
                " bytes, not " + std::to_string(bytes));
}

}  // namespace

const QuantLayout& quant_layout(QuantType type) {
  return kLayouts[layout_index(type)];
}

int64_t quant_row_bytes(QuantType type, int64_t n) {
  const QuantLayout& layout = quant_layout(type);
  if (n < 0 || n % layout.block_values != 0)
    throw Error("a row of " + std::to_string(n) + " values is not a whole number of " +
                std::string(layout.name) + " blocks (" + std::to_string(layout.block_values) +
                " values each)");
  return n / layout.block_values * layout.block_bytes;
}

QuantType activation_type(QuantType weight_type) {
  switch (weight_type) {
    case QuantType::Q8_0:
    case QuantType::Q4_0:
      return QuantType::Q8_0;
    case QuantType::Q4_K:
    case QuantType::Q5_K:
    case QuantType::Q6_K:
      return QuantType::Q8_K;
    case QuantType::Q8_K:
      break;
  }
  throw Error(std::string(quant_layout(weight_type).name) +
              " is an activation format, not a weight's");
}

// Rounds in integer arithmetic: the exponent rebased from fp32's bias to fp16's, then 13
// mantissa bits dropped to nearest-even; halves' subnormals come from an fp32 addition whose
// rounding does the same.
uint16_t float_to_half(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u;   // NaN (quiet)
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // 65520 and above round to infinity
  if (magnitude < 0x38800000u) {                        // below 2^-14: a subnormal half
    // Adding 0.5 leaves the value in units of 2^-24 (0.5's last mantissa bit), rounded.
    const float shifted = std::bit_cast<float>(magnitude) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(shifted) - 0x3F000000u);
  }
  const uint32_t odd = (magnitude >> 13) & 1u;
  const uint32_t rebased = magnitude - (uint32_t{127 - 15} << 23) + 0xFFFu + odd;
  return sign | static_cast<uint16_t>(rebased >> 13);
}

void dequantize_row(QuantType type, std::span<const uint8_t> bytes, std::span<float> out) {
  check_sizes(type, out.size(), bytes.size(), "dequantize_row");
  const QuantLayout& layout = quant_layout(type);
  const int64_t blocks = static_cast<int64_t>(out.size()) / layout.block_values;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = bytes.data() + b * layout.block_bytes;
    float* values = out.data() + b * layout.block_values;
    switch (type) {
      case QuantType::Q8_0:
        dequantize_q8_0(block, values);
        break;
      case QuantType::Q4_0:
        dequantize_q4_0(block, values);
        break;
      case QuantType::Q4_K:
        dequantize_k_affine(block, block + q4_k::kQ, nullptr, values);
        break;
      case QuantType::Q5_K:
        dequantize_k_affine(block, block + q5_k::kQ, block + q5_k::kQh, values);
        break;
      case QuantType::Q6_K:
        dequantize_q6_k(block, values);
        break;
      case QuantType::Q8_K:
        dequantize_q8_k(block, values);
        break;
    }
  }
}

void quantize_row(QuantType type, std::span<const float> values, std::span<uint8_t> bytes) {
  check_sizes(type, values.size(), bytes.size(), "quantize_row");
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      throw Error("quantize_row: value " + std::to_string(i) + " is " + std::to_string(values[i]) +
                  " (" + std::string(quant_layout(type).name) + " holds finite values only)");
  const QuantLayout& layout = quant_layout(type);
  const int64_t blocks = static_cast<int64_t>(values.size()) / layout.block_values;
  for (int64_t b = 0; b < blocks; ++b)
    quantize_block(type, values.data() + b * layout.block_values,
                   bytes.data() + b * layout.block_bytes);
}

std::vector<uint8_t> quantize_activations(QuantType weight_type, std::span<const float> x) {
  const QuantType type = activation_type(weight_type);
  std::vector<uint8_t> bytes(static_cast<size_t>(quant_row_bytes(type, std::ssize(x))));
  quantize_activations(weight_type, x, bytes);
  return bytes;
}

void quantize_activations(QuantType weight_type, std::span<const float> x,
                          std::span<uint8_t> bytes) {
  const QuantType type = activation_type(weight_type);
  const QuantLayout& layout = quant_layout(type);
  check_sizes(type, x.size(), bytes.size(), "quantize_activations");
  const int64_t blocks = std::ssize(x) / layout.block_values;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* values = x.data() + b * layout.block_values;
    uint8_t* block = bytes.data() + b * layout.block_bytes;
    if (std::all_of(values, values + layout.block_values,
                    [](float v) { return std::isfinite(v); })) {
      if (type == QuantType::Q8_0)
        quantize_q8_0_activations(values, block);
      else
        quantize_block(type, values, block);
    } else {  // a NaN scale and zero quants: the block's products are NaN
      std::fill(block, block + layout.block_bytes, 0);
      if (type == QuantType::Q8_0) {
        store_half(block + q8_0::kD, std::numeric_limits<float>::quiet_NaN());
      } else {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(block + q8_k::kD, &nan, sizeof nan);
      }
    }
  }
}

}  // namespace moe
