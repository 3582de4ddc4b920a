#pragma once
// The one door to BLAS. Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
// op(X) is X or X^T as the Trans flags say; lda/ldb/ldc are row strides of the stored arrays.
#include <cstdint>

namespace moe {

enum class Trans { No, Yes };

// How gemm_bf16_weight multiplies more than a few rows. Auto asks the CPU; the others force
// one (tests and benchmarks compare them); Avx512Bf16 on a CPU without it throws.
enum class Bf16Kernel { Auto, Avx512Bf16, WidenToSgemm };
Bf16Kernel resolve_bf16_kernel(Bf16Kernel kernel);  // Auto -> the kernel this CPU gets

// C[m, n] = A[m, k] · B[n, k]^T with B a bf16 weight stored as Hugging Face stores a Linear's
// ([out, in]); A and C fp32, C overwritten.
//  - a few rows of A (decode): B streams once, each weight widened to fp32 as it arrives, the
//    products exact. The step is bound by memory bandwidth, so widening is free.
//  - more rows (prefill) with AVX512-BF16: A is rounded to bf16 once, and each output is a sum
//    of vdpbf16ps pair products in fp32: twice fp32 FMA's multiply rate.
//  - more rows elsewhere: panels of B are widened to fp32 and handed to sgemm.
void gemm_bf16_weight(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc,
                      Bf16Kernel kernel = Bf16Kernel::Auto);

// C[m, j0:j1] = A[m, k] · B[j0:j1, k]^T for a few rows of A (m <= 6), B fp32 or bf16 ([out,
// in] as above), on the calling thread alone: for callers that share B's rows among their own
// threads (a decode step runs in one parallel region). Each output is the sum gemm (alpha 1,
// beta 0) and gemm_bf16_weight compute for it, to the bit.
void gemm_few_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc);
void gemm_few_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float* c, int64_t ldc);

// The same for any number of rows of A, each output the bits gemm_few_rows gives its row alone
// (m = 1), each weight loaded once for a pair of rows: a batch of sequences' decode steps, each
// row equal to its step alone.
void gemm_rows_as_one(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc);
void gemm_rows_as_one(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc);

void gemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc);

}  // namespace moe
