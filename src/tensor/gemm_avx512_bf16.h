#pragma once
// The AVX-512 kernels behind gemm_bf16_weight (tensor/gemm.h): the tiles only where
// use_avx512_bf16() holds, the streaming ones where kernel_set() is Avx512 (tensor/cpu.h). C[m, n] = A[m, k] · B[n, k]^T, C overwritten.
#include <cstdint>

namespace moe {

void gemm_avx512_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc);

// The few-row product (decode): m <= 6 rows of A, each row of B streamed once and widened.
// Needs AVX-512 (F, BW), which every AVX512-BF16 CPU has.
void gemm_avx512_stream_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                             const uint16_t* b, int64_t ldb, float* c, int64_t ldc);
// The same for rows [j0, j1) of B only, on the calling thread.
void gemm_avx512_stream_bf16_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a,
                                  int64_t lda, const uint16_t* b, int64_t ldb, float* c,
                                  int64_t ldc);

}  // namespace moe
