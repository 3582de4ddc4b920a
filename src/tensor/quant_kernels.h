#pragma once
// Internal to the quantized formats (tensor/quant.h): the K formats' quantizers
// (quant_k_quantize.cpp) and the dot-product kernels of each kernel set (quant_dot.cpp generic,
// quant_avx2.cpp, quant_avx512.cpp). Every pointer is a whole number of blocks
// (tensor/quant_blocks.h); the checks happen once, in quant.cpp and quant_dot.cpp.
#include <cstdint>

#include "tensor/quant.h"

namespace moe::quant_kernels {

// 256 values -> one block.
void quantize_block_q4_k(const float* x, uint8_t* block);
void quantize_block_q5_k(const float* x, uint8_t* block);
void quantize_block_q6_k(const float* x, uint8_t* block);

// The dot product of `blocks` weight blocks with as many activation blocks (Q8_0 beside Q8_0
// and Q4_0, Q8_K beside the K formats). Every set returns the generic kernel's bits.
using DotKernel = float (*)(const uint8_t* weights, const uint8_t* activations, int64_t blocks);

// The kernel of the set in use (kernel_set()) for weights of `weight_type`.
DotKernel dot_kernel(QuantType weight_type);

float dot_q8_0_generic(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q4_0_generic(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q4_k_generic(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q5_k_generic(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q6_k_generic(const uint8_t* w, const uint8_t* a, int64_t blocks);

// AVX2 + FMA.
float dot_q8_0_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q4_0_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q4_k_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q5_k_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q6_k_avx2(const uint8_t* w, const uint8_t* a, int64_t blocks);

// AVX-512 F + BW (+ the AVX2 set).
float dot_q8_0_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q4_0_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q4_k_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q5_k_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks);
float dot_q6_k_avx512(const uint8_t* w, const uint8_t* a, int64_t blocks);

}  // namespace moe::quant_kernels
