#pragma once
// The one door to BLAS. Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
// op(X) is X or X^T as the Trans flags say; lda/ldb/ldc are row strides of the stored arrays.
#include <cstdint>

namespace moe {

enum class Trans { No, Yes };

void gemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc);

}  // namespace moe
