#include "tensor/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/gemm_avx512_bf16.h"

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

inline float widen(float v) {
  return v;
}
inline float widen(uint16_t v) {
  return bf16_to_float(v);
}

// C[m, j0:j1] = alpha A[m, k] B[j0:j1, k]^T + beta C, m small: each row of B meets every row
// of A while it is in L1, four rows of A at a time. B is fp32 or bf16 (widened as it streams in).
template <typename Weight>
void skinny_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, float alpha, const float* a,
                 int64_t lda, const Weight* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t j = j0; j < j1; ++j) {
    const Weight* bj = b + j * ldb;
    int64_t r = 0;
    for (; r + 4 <= m; r += 4) {
      const float *a0 = a + r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t i = 0; i < k; ++i) {
        const float w = widen(bj[i]);
        s0 += a0[i] * w;
        s1 += a1[i] * w;
        s2 += a2[i] * w;
        s3 += a3[i] * w;
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
      for (int64_t i = 0; i < k; ++i) s += ar[i] * widen(bj[i]);
      float& out = c[r * ldc + j];
      out = blend(alpha, s, beta, out);
    }
  }
}

// skinny_rows over all n rows of B, split among the threads.
template <typename Weight>
void skinny_a_bt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const Weight* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  split_range(n, m * n * k, [&](int64_t j0, int64_t j1) {
    skinny_rows(m, j0, j1, k, alpha, a, lda, b, ldb, beta, c, ldc);
  });
}

// Rows of a bf16 weight per panel widened for sgemm: 1024 rows of K = 4096 are 16 MiB of fp32,
// small beside the product's work (m rows times the panel) and reused by every row of A.
constexpr int64_t kWidenPanelRows = 1024;

void widen_to_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b,
                    int64_t ldb, float* c, int64_t ldc) {
  std::vector<float> panel(static_cast<size_t>(std::min(n, kWidenPanelRows) * k));
  for (int64_t j0 = 0; j0 < n; j0 += kWidenPanelRows) {
    const int64_t rows = std::min(kWidenPanelRows, n - j0);
#pragma omp parallel for schedule(static) if (rows * k >= (int64_t{1} << 16))
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t i = 0; i < k; ++i) panel[j * k + i] = bf16_to_float(b[(j0 + j) * ldb + i]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                static_cast<int>(rows), static_cast<int>(k), 1.0f, a, static_cast<int>(lda),
                panel.data(), static_cast<int>(k), 0.0f, c + j0, static_cast<int>(ldc));
  }
}

}  // namespace

Bf16Kernel resolve_bf16_kernel(Bf16Kernel kernel) {
  if (kernel == Bf16Kernel::Auto)
    return cpu_has_avx512_bf16() ? Bf16Kernel::Avx512Bf16 : Bf16Kernel::WidenToSgemm;
  if (kernel == Bf16Kernel::Avx512Bf16 && !cpu_has_avx512_bf16())
    throw Error("the AVX512-BF16 kernel was asked for, but this CPU lacks AVX512-BF16");
  return kernel;
}

void gemm_bf16_weight(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc, Bf16Kernel kernel) {
  if (m == 0 || n == 0) return;
  const bool avx512_bf16 = resolve_bf16_kernel(kernel) == Bf16Kernel::Avx512Bf16;
  if (m <= kSkinnyRows || k == 0) {
    if (avx512_bf16 && k > 0) return gemm_avx512_stream_bf16(m, n, k, a, lda, b, ldb, c, ldc);
    return skinny_a_bt(m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  }
  if (avx512_bf16) return gemm_avx512_bf16(m, n, k, a, lda, b, ldb, c, ldc);
  widen_to_sgemm(m, n, k, a, lda, b, ldb, c, ldc);
}

void gemm_few_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc) {
  skinny_rows(m, j0, j1, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void gemm_few_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  static const bool avx512_bf16 = cpu_has_avx512_bf16();
  if (avx512_bf16 && k > 0)
    return gemm_avx512_stream_bf16_rows(m, j0, j1, k, a, lda, b, ldb, c, ldc);
  skinny_rows(m, j0, j1, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

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
