// Products of quantized weights with quantized activations (tensor/quant.h): the generic
// kernels, the choice of kernel set, vec_dot and the matrix-vector product of decode.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tensor/cpu.h"
#include "tensor/error.h"
#include "tensor/quant.h"
#include "tensor/quant_blocks.h"
#include "tensor/quant_kernels.h"

namespace moe {
namespace quant_kernels {

using namespace quant_blocks;

// Each kernel's integer sums are exact; the fp32 steps after them (for the 32-value formats
// quant_blocks.h's 8 lanes, for the K formats one running total) are the ones every set
// repeats in the same order.

// unpack(block, values): the weight block's 32 values as signed bytes.
template <typename Unpack>
float dot_blocks32_generic(const uint8_t* w, int64_t w_bytes, const uint8_t* a, int64_t blocks,
                           Unpack unpack) {
  float lane[kLanes] = {};
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * w_bytes;
    const uint8_t* ab = a + b * q8_0::kBytes;
    const auto* aq = reinterpret_cast<const int8_t*>(ab + q8_0::kQ);
    int8_t values[kValues32];
    unpack(wb, values);
    int32_t sum = 0;
    for (int i = 0; i < kValues32; ++i) sum += values[i] * aq[i];
    lane[b % kLanes] += (load_half(wb) * load_half(ab)) * static_cast<float>(sum);
  }
  return lanes_total(lane);
}

float dot_q8_0_generic(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_blocks32_generic(w, q8_0::kBytes, a, blocks,
                              [](const uint8_t* block, int8_t(&values)[kValues32]) {
                                std::memcpy(values, block + q8_0::kQ, kValues32);
                              });
}

float dot_q4_0_generic(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_blocks32_generic(w, q4_0::kBytes, a, blocks,
                              [](const uint8_t* block, int8_t(&values)[kValues32]) {
                                const uint8_t* q = block + q4_0::kQ;
                                for (int j = 0; j < 16; ++j) {
                                  values[j] = static_cast<int8_t>((q[j] & 0xF) - 8);
                                  values[j + 16] = static_cast<int8_t>((q[j] >> 4) - 8);
                                }
                              });
}

// Q4_K and Q5_K (fifth_bits: Q5_K's qh offset, or 0 for Q4_K).
float dot_k_affine_generic(const uint8_t* w, const uint8_t* a, int64_t blocks, int64_t block_bytes,
                           int64_t low_bits, int64_t fifth_bits) {
  const float* half_table = half_to_float_table();
  float total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * block_bytes;
    const uint8_t* ab = a + b * q8_k::kBytes;
    const auto* aq = reinterpret_cast<const int8_t*>(ab + q8_k::kQ);
    const KScales s = unpack_k_scales(wb + q4_k::kScales);
    int32_t sum = 0;
    for (int sub = 0; sub < kSubBlocks; ++sub) {
      const uint8_t* chunk = wb + low_bits + 32 * (sub / 2);
      int32_t part = 0;
      for (int l = 0; l < 32; ++l) {
        int q = (chunk[l] >> (4 * (sub % 2))) & 0xF;
        if (fifth_bits) q |= ((wb[fifth_bits + l] >> sub) & 1) << 4;
        part += q * aq[32 * sub + l];
      }
      sum += s.scale(sub) * part;
    }
    total +=
        k_affine_block_term(half_table, wb, load_f32(ab + q8_k::kD), sum, k_min_products(s, ab));
  }
  return total;
}

float dot_q4_k_generic(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_k_affine_generic(w, a, blocks, q4_k::kBytes, q4_k::kQ, 0);
}
float dot_q5_k_generic(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  return dot_k_affine_generic(w, a, blocks, q5_k::kBytes, q5_k::kQ, q5_k::kQh);
}

float dot_q6_k_generic(const uint8_t* w, const uint8_t* a, int64_t blocks) {
  const float* half_table = half_to_float_table();
  float total = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * q6_k::kBytes;
    const uint8_t* ab = a + b * q8_k::kBytes;
    const auto* aq = reinterpret_cast<const int8_t*>(ab + q8_k::kQ);
    const auto* sc = reinterpret_cast<const int8_t*>(wb + q6_k::kScales);
    int32_t group_sum[kGroups] = {};
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = wb + q6_k::kQl + 64 * half;
      const uint8_t* qh = wb + q6_k::kQh + 32 * half;
      for (int k = 0; k < 4; ++k) {  // run k: values 128 half + 32k + l, groups 2 of 16
        int8_t values[32];
        for (int l = 0; l < 32; ++l) {
          const int low = (ql[32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
          values[l] = static_cast<int8_t>((low | (((qh[l] >> (2 * k)) & 3) << 4)) - 32);
        }
        const int8_t* aq_run = aq + 128 * half + 32 * k;
        for (int g = 0; g < 2; ++g) {
          int32_t part = 0;
          for (int l = 16 * g; l < 16 * g + 16; ++l) part += values[l] * aq_run[l];
          group_sum[8 * half + 2 * k + g] += part;
        }
      }
    }
    int32_t sum = 0;
    for (int g = 0; g < kGroups; ++g) sum += sc[g] * group_sum[g];
    total += q6_k_block_term(half_table, wb, load_f32(ab + q8_k::kD), sum);
  }
  return total;
}

namespace {

DotKernel pick(DotKernel generic, DotKernel avx2, DotKernel avx512) {
  switch (kernel_set()) {
    case KernelSet::Avx512:
      return avx512;
    case KernelSet::Avx2:
      return avx2;
    case KernelSet::Generic:
      break;
  }
  return generic;
}

}  // namespace

DotKernel dot_kernel(QuantType weight_type) {
  switch (weight_type) {
    case QuantType::Q8_0:
      return pick(dot_q8_0_generic, dot_q8_0_avx2, dot_q8_0_avx512);
    case QuantType::Q4_0:
      return pick(dot_q4_0_generic, dot_q4_0_avx2, dot_q4_0_avx512);
    case QuantType::Q4_K:
      return pick(dot_q4_k_generic, dot_q4_k_avx2, dot_q4_k_avx512);
    case QuantType::Q5_K:
      return pick(dot_q5_k_generic, dot_q5_k_avx2, dot_q5_k_avx512);
    case QuantType::Q6_K:
      return pick(dot_q6_k_generic, dot_q6_k_avx2, dot_q6_k_avx512);
    case QuantType::Q8_K:
      break;
  }
  throw Error(std::string(quant_layout(weight_type).name) +
              " is an activation format, not a weight's");
}

}  // namespace quant_kernels

float vec_dot(QuantType weight_type, std::span<const uint8_t> weights,
              std::span<const uint8_t> activations, int64_t n) {
  const quant_kernels::DotKernel dot = quant_kernels::dot_kernel(weight_type);
  require(std::ssize(weights) == quant_row_bytes(weight_type, n),
          "vec_dot: the weights are not one row of n values");
  require(std::ssize(activations) == quant_row_bytes(activation_type(weight_type), n),
          "vec_dot: the activations are not n values quantized for these weights");
  return dot(weights.data(), activations.data(), n / quant_layout(weight_type).block_values);
}

void quantized_rows(QuantType type, std::span<const uint8_t> weights, int64_t cols,
                    std::span<const uint8_t> activations, int64_t j0, int64_t j1, float* y) {
  const quant_kernels::DotKernel dot = quant_kernels::dot_kernel(type);
  const int64_t row_bytes = quant_row_bytes(type, cols);
  require(j0 >= 0 && j0 <= j1 && j1 <= std::ssize(weights) / row_bytes,
          "quantized_rows: rows outside the weights");
  require(std::ssize(activations) == quant_row_bytes(activation_type(type), cols),
          "quantized_rows: the activations are not cols values quantized for these weights");
  const int64_t blocks = cols / quant_layout(type).block_values;
  for (int64_t j = j0; j < j1; ++j)
    y[j] = dot(weights.data() + j * row_bytes, activations.data(), blocks);
}

void quantized_matmul(QuantType type, std::span<const uint8_t> weights, int64_t rows, int64_t cols,
                      const float* x, int64_t tokens, int64_t ldx, float* y, int64_t ldy) {
  const quant_kernels::DotKernel dot = quant_kernels::dot_kernel(type);
  const int64_t row_bytes = quant_row_bytes(type, cols);
  require(rows >= 0 && (rows == 0 || row_bytes <= std::numeric_limits<int64_t>::max() / rows) &&
              std::ssize(weights) == rows * row_bytes,
          "quantized_matmul: the weights are not rows x cols values");
  require(tokens >= 0 && ldx >= cols && ldy >= rows, "quantized_matmul: bad row strides");
  const QuantType act_type = activation_type(type);
  const int64_t act_bytes = quant_row_bytes(act_type, cols);
  std::vector<uint8_t> activations(static_cast<size_t>(tokens * act_bytes));
#pragma omp parallel for schedule(static) if (tokens >= 4)
  for (int64_t t = 0; t < tokens; ++t)
    quantize_activations(type, {x + t * ldx, size_t(cols)},
                         {activations.data() + t * act_bytes, size_t(act_bytes)});
  const int64_t blocks = cols / quant_layout(type).block_values;
  // Tiles of a few weight rows: each row stays in L1 while every token's activations pass it.
  constexpr int64_t kTileRows = 4;
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(dynamic, 4) if (rows * tokens >= 64)
  for (int64_t tile = 0; tile < tiles; ++tile)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = tile * kTileRows; j < std::min(rows, (tile + 1) * kTileRows); ++j)
        y[t * ldy + j] =
            dot(weights.data() + j * row_bytes, activations.data() + t * act_bytes, blocks);
}

void quantized_matvec(QuantType type, std::span<const uint8_t> weights, int64_t rows, int64_t cols,
                      std::span<const float> x, std::span<float> y) {
  const quant_kernels::DotKernel dot = quant_kernels::dot_kernel(type);
  const int64_t row_bytes = quant_row_bytes(type, cols);
  require(rows >= 0 && (rows == 0 || row_bytes <= std::numeric_limits<int64_t>::max() / rows) &&
              std::ssize(weights) == rows * row_bytes,
          "quantized_matvec: the weights are not rows x cols values");
  require(std::ssize(x) == cols && std::ssize(y) == rows,
          "quantized_matvec: x must hold cols values and y rows");
  const std::vector<uint8_t> activations = quantize_activations(type, x);
  const int64_t blocks = cols / quant_layout(type).block_values;
  auto run_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      y[r] = dot(weights.data() + r * row_bytes, activations.data(), blocks);
  };
  // Inline when already inside a parallel region (an expert per thread) or too small to share.
  if (omp_in_parallel() || std::ssize(weights) < (int64_t{1} << 16)) return run_rows(0, rows);
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    run_rows(rows * t / threads, rows * (t + 1) / threads);
  }
}

}  // namespace moe
