#include "tensor/gemm.h"

#include <cblas.h>
#include <omp.h>

namespace moe {
namespace {

// x W^T with only a few rows of x (a decode step, an expert given a handful of tokens) is a
// stream over W. OpenBLAS packs W before its kernel touches it, which makes the call 2-4x
// slower than reading W once at 1-4 rows (measured on the MoE layer's expert shapes, AVX2 and
// AVX-512); at 8 rows the two break even. The other transposes (dh W, dh^T x) stay with
// OpenBLAS: plain loops for them, written like this one, ran 1.2-2.7x slower than it.
constexpr int64_t kSkinnyRows = 6;

// Runs body(begin, end) over [0, n) split among the threads, or inline when already inside a
// parallel region (an expert per thread) or when the work is too small to share.
template <typename Body>
void split_range(int64_t n, int64_t work, Body&& body) {
  if (omp_in_parallel() || work < (int64_t{1} << 18)) {
    body(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    body(n * t / threads, n * (t + 1) / threads);
  }
}

inline float blend(float alpha, float product, float beta, float old) {
  return beta == 0.0f ? alpha * product : alpha * product + beta * old;  // beta 0: C not read
}

// C[m, n] = alpha A[m, k] B[n, k]^T + beta C, m small: each row of B meets every row of A
// while it is in L1, four rows of A at a time.
void skinny_a_bt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  split_range(n, m * n * k, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const float* bj = b + j * ldb;
      int64_t r = 0;
      for (; r + 4 <= m; r += 4) {
        const float *a0 = a + r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t i = 0; i < k; ++i) {
          s0 += a0[i] * bj[i];
          s1 += a1[i] * bj[i];
          s2 += a2[i] * bj[i];
          s3 += a3[i] * bj[i];
        }
        const float sums[4] = {s0, s1, s2, s3};
        for (int64_t q = 0; q < 4; ++q) {
          float& out = c[(r + q) * ldc + j];
          out = blend(alpha, sums[q], beta, out);
        }
      }
      for (; r < m; ++r) {
        const float* ar = a + r * lda;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < k; ++i) s += ar[i] * bj[i];
        float& out = c[r * ldc + j];
        out = blend(alpha, s, beta, out);
      }
    }
  });
}

}  // namespace

void gemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (trans_a == Trans::No && trans_b == Trans::Yes && m <= kSkinnyRows && k > 0)
    return skinny_a_bt(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  cblas_sgemm(CblasRowMajor, trans_a == Trans::Yes ? CblasTrans : CblasNoTrans,
              trans_b == Trans::Yes ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

}  // namespace moe
