#pragma once
// Block-quantized weights in ggml's formats, byte for byte as llama.cpp stores them in GGUF
// files, so a file's tensors are used in place (the layouts: tensor/quant_blocks.h).
//
// A row of n values is n / block_values blocks; each block holds one or a few fp16 scales and
// small integers. Products follow ggml: the activations are quantized per block too (Q8_0
// beside Q8_0 and Q4_0 weights, Q8_K beside the K formats), each block's product is an integer
// sum, and only the block sums are scaled and added in fp32. Every kernel set (tensor/cpu.h)
// adds them in the same order, so vec_dot gives the same bits under generic, AVX2 and AVX-512.
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moe {

// ggml's type ids, as GGUF's tensor infos store them.
enum class QuantType : uint32_t { Q4_0 = 2, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15 };

struct QuantLayout {
  std::string_view name;  // ggml's: "q8_0", "q4_K", ...
  int64_t block_values;   // values per block: 32 or 256
  int64_t block_bytes;    // bytes per block
};
// Throws an Error for an id outside the enumeration.
const QuantLayout& quant_layout(QuantType type);
// The bytes of a row of n values; n must be a multiple of the block size (an Error names both).
int64_t quant_row_bytes(QuantType type, int64_t n);
// The activations' format in products with weights of `weight_type`: Q8_0 for Q8_0 and Q4_0,
// Q8_K for Q4_K, Q5_K and Q6_K.
QuantType activation_type(QuantType weight_type);

// fp32 -> IEEE half, to nearest with ties to even (as ggml and numpy round the scales).
uint16_t float_to_half(float f);

// bytes: quant_row_bytes(type, out.size()) bytes -> out: the values. Any type, Q8_K included.
void dequantize_row(QuantType type, std::span<const uint8_t> bytes, std::span<float> out);

// values -> bytes: quant_row_bytes(type, values.size()) bytes. Non-finite values are an Error.
// Q8_0 and Q4_0 round exactly as ggml's reference quantizer (the bytes are ggml's). Q4_K, Q5_K
// and Q6_K search each sub-block's scale (and min) for the least weighted squared error step
// for step as ggml's reference quantizer does (no importance matrix); on the data measured
// (tests/test_quant.cpp) every block came out byte-identical to ggml's, which the suite cannot
// check (gguf-py has no K quantizer), so only the error is promised. Q8_K: the activations'
// format.
void quantize_row(QuantType type, std::span<const float> values, std::span<uint8_t> bytes);

// x -> x quantized in activation_type(weight_type), the right-hand side of vec_dot. A
// non-finite x makes every product with it NaN (no Error: the engine checks its outputs).
std::vector<uint8_t> quantize_activations(QuantType weight_type, std::span<const float> x);

// The same into `bytes` (quant_row_bytes(activation_type(weight_type), x.size()) of them), with
// no allocation: for loops that quantize an input per product.
void quantize_activations(QuantType weight_type, std::span<const float> x,
                          std::span<uint8_t> bytes);

// The dot product of one row of n weights with n activations (quantize_activations' bytes).
float vec_dot(QuantType weight_type, std::span<const uint8_t> weights,
              std::span<const uint8_t> activations, int64_t n);

// y[r] = sum_c w[r, c] * x[c]: w is `rows` rows of `cols` values in `type`, row after row
// (quant_row_bytes(type, cols) bytes each). x is quantized once; threads split the rows (on
// the calling thread alone inside a parallel region). Each weight is read once.
// weights: [rows, cols] quantized  x: [cols]  y: [rows]
// y[j] = w[j, :] . x for the rows j0 <= j < j1 of w (`cols` values each), x already quantized
// (quantize_activations), on the calling thread: a share of a product inside a parallel region.
void quantized_rows(QuantType type, std::span<const uint8_t> weights, int64_t cols,
                    std::span<const uint8_t> activations, int64_t j0, int64_t j1, float* y);

// y[t, j] = sum_c x[t, c] * w[j, c] for `tokens` rows of x (row stride ldx) and the `rows` rows
// of w (row stride of y: ldy): each x row quantized once, then the threads share w's rows and
// take each row through every token while it is in cache, so each weight is read once.
// weights: [rows, cols] quantized  x: [tokens, cols]  y: [tokens, rows]
void quantized_matmul(QuantType type, std::span<const uint8_t> weights, int64_t rows, int64_t cols,
                      const float* x, int64_t tokens, int64_t ldx, float* y, int64_t ldy);

void quantized_matvec(QuantType type, std::span<const uint8_t> weights, int64_t rows, int64_t cols,
                      std::span<const float> x, std::span<float> y);

}  // namespace moe
