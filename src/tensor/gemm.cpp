#include "tensor/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "tensor/bf16.h"
#include "tensor/cpu.h"
#include "tensor/dispatch.h"
#include "tensor/error.h"
#include "tensor/gemm_avx512_bf16.h"
#include "tensor/lanes.h"

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

// How far ahead of its loads a row of W is prefetched (into the next rows at a row's end: the
// rows lie back to back). The hardware prefetcher alone lost 10-20% of bf16 decode.
constexpr int64_t kPrefetchBytes = 1024;

// sums[r] = a_rows[r] . w for R rows, each row summed alone: 32 weights a step into two sets of
// lanes, so twice as many adds are in flight, then the sets added lane by lane. A row's sum has
// the same bits whatever R is, while each weight is loaded and widened once for the R rows.
template <int R, typename Weight>
inline void dot_rows_as_one(const float* const (&a_rows)[R], const Weight* w, int64_t k,
                            float* sums) {
  Lanes16 acc[R][2], wv, av;
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    for (int64_t line = 0; line < 32 * int64_t{sizeof(Weight)}; line += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(w + i) + kPrefetchBytes + line);
    for (int half = 0; half < 2; ++half) {
      load16(wv, w + i + 16 * half);
      for (int r = 0; r < R; ++r) {
        load16(av, a_rows[r] + i + 16 * half);
        add_products(acc[r][half], av, wv);
      }
    }
  }
  for (; i + 16 <= k; i += 16) {
    load16(wv, w + i);
    for (int r = 0; r < R; ++r) {
      load16(av, a_rows[r] + i);
      add_products(acc[r][0], av, wv);
    }
  }
  if (i < k) {
    load_tail(wv, w + i, k - i);
    for (int r = 0; r < R; ++r) {
      load_tail(av, a_rows[r] + i, k - i);
      add_products(acc[r][0], av, wv);
    }
  }
  for (int r = 0; r < R; ++r) {
    acc[r][0].lo += acc[r][1].lo;
    acc[r][0].hi += acc[r][1].hi;
    sums[r] = lane_total(acc[r][0]);
  }
}

// One row of A (a decode step).
template <typename Weight>
inline float dot_one_row(const float* a, const Weight* w, int64_t k) {
  const float* const row[1] = {a};
  float sum;
  dot_rows_as_one<1>(row, w, k, &sum);
  return sum;
}

// C[m, j0:j1] = A[m, k] B[j0:j1, k]^T with each output the bits of the one-row kernel: rows of
// A in pairs (two rows' two sets of lanes fill AVX2's registers), an odd last row alone.
template <typename Weight>
inline void rows_as_one_body(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a,
                             int64_t lda, const Weight* b, int64_t ldb, float* c, int64_t ldc) {
  int64_t r = 0;
  for (; r + 2 <= m; r += 2) {
    const float* const rows[2] = {a + r * lda, a + (r + 1) * lda};
    for (int64_t j = j0; j < j1; ++j) {
      float sums[2];
      dot_rows_as_one<2>(rows, b + j * ldb, k, sums);
      c[r * ldc + j] = sums[0];
      c[(r + 1) * ldc + j] = sums[1];
    }
  }
  if (r < m)
    for (int64_t j = j0; j < j1; ++j) c[r * ldc + j] = dot_one_row(a + r * lda, b + j * ldb, k);
}

// sums[r] = a_rows[r] . w over k, for R rows of A at once: each 16 weights are loaded (and
// widened) once and meet all R rows in registers. Sums in 16 lanes (tensor/lanes.h): the same
// bits in every kernel set, and no add waits on the one before.
template <int R, typename Weight>
inline void dot_rows(const float* const (&a_rows)[R], const Weight* w, int64_t k, float* sums) {
  if constexpr (R == 1) {
    sums[0] = dot_one_row(a_rows[0], w, k);
    return;
  }
  Lanes16 acc[R], wv, av;
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __builtin_prefetch(w + i + kPrefetchBytes / sizeof(Weight));
    load16(wv, w + i);
    for (int r = 0; r < R; ++r) {
      load16(av, a_rows[r] + i);
      add_products(acc[r], av, wv);
    }
  }
  if (i < k) {
    load_tail(wv, w + i, k - i);
    for (int r = 0; r < R; ++r) {
      load_tail(av, a_rows[r] + i, k - i);
      add_products(acc[r], av, wv);
    }
  }
  for (int r = 0; r < R; ++r) sums[r] = lane_total(acc[r]);
}

template <int R, typename Weight>
inline void rows_times_weight(int64_t j0, int64_t j1, int64_t k, float alpha, const float* a,
                              int64_t lda, const Weight* b, int64_t ldb, float beta, float* c,
                              int64_t ldc) {
  const float* a_rows[R];
  for (int r = 0; r < R; ++r) a_rows[r] = a + r * lda;
  for (int64_t j = j0; j < j1; ++j) {
    float sums[R];
    dot_rows<R>(a_rows, b + j * ldb, k, sums);
    for (int r = 0; r < R; ++r) {
      float& out = c[r * ldc + j];
      out = blend(alpha, sums[r], beta, out);
    }
  }
}

// C[m, j0:j1] = alpha A[m, k] B[j0:j1, k]^T + beta C, m small: each row of B meets four rows of A
// at a time while it is in L1. B is fp32 or bf16 (widened as it streams in).
template <typename Weight>
inline void skinny_rows_body(int64_t m, int64_t j0, int64_t j1, int64_t k, float alpha,
                             const float* a, int64_t lda, const Weight* b, int64_t ldb, float beta,
                             float* c, int64_t ldc) {
  int64_t r = 0;
  for (; r + 4 <= m; r += 4)
    rows_times_weight<4>(j0, j1, k, alpha, a + r * lda, lda, b, ldb, beta, c + r * ldc, ldc);
  const float* ar = a + r * lda;
  float* cr = c + r * ldc;
  switch (m - r) {
    case 3:
      return rows_times_weight<3>(j0, j1, k, alpha, ar, lda, b, ldb, beta, cr, ldc);
    case 2:
      return rows_times_weight<2>(j0, j1, k, alpha, ar, lda, b, ldb, beta, cr, ldc);
    case 1:
      return rows_times_weight<1>(j0, j1, k, alpha, ar, lda, b, ldb, beta, cr, ldc);
  }
}

#define MOE_AS_ONE_PARAMS(Weight)                                                              \
  (int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda, const Weight* b, \
   int64_t ldb, float* c, int64_t ldc)
#define MOE_AS_ONE_ARGS (m, j0, j1, k, a, lda, b, ldb, c, ldc)
MOE_KERNEL(rows_as_one_f32, MOE_AS_ONE_PARAMS(float), MOE_AS_ONE_ARGS, rows_as_one_body<float>)
MOE_KERNEL(rows_as_one_bf16, MOE_AS_ONE_PARAMS(uint16_t), MOE_AS_ONE_ARGS,
           rows_as_one_body<uint16_t>)
#undef MOE_AS_ONE_PARAMS
#undef MOE_AS_ONE_ARGS

#define MOE_SKINNY_PARAMS(Weight)                                                          \
  (int64_t m, int64_t j0, int64_t j1, int64_t k, float alpha, const float* a, int64_t lda, \
   const Weight* b, int64_t ldb, float beta, float* c, int64_t ldc)
#define MOE_SKINNY_ARGS (m, j0, j1, k, alpha, a, lda, b, ldb, beta, c, ldc)
MOE_KERNEL(skinny_rows_f32, MOE_SKINNY_PARAMS(float), MOE_SKINNY_ARGS, skinny_rows_body<float>)
MOE_KERNEL(skinny_rows_bf16, MOE_SKINNY_PARAMS(uint16_t), MOE_SKINNY_ARGS,
           skinny_rows_body<uint16_t>)
#undef MOE_SKINNY_PARAMS
#undef MOE_SKINNY_ARGS

inline void skinny_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, float alpha, const float* a,
                        int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                        int64_t ldc) {
  skinny_rows_f32(m, j0, j1, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void skinny_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, float alpha, const float* a,
                        int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c,
                        int64_t ldc) {
  skinny_rows_bf16(m, j0, j1, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
    return use_avx512_bf16() ? Bf16Kernel::Avx512Bf16 : Bf16Kernel::WidenToSgemm;
  if (kernel == Bf16Kernel::Avx512Bf16 && !use_avx512_bf16())
    throw Error(
        "the AVX512-BF16 kernel was asked for, but this CPU lacks AVX512-BF16 (or "
        "MOE_KERNELS chose a lower set)");
  return kernel;
}

void gemm_bf16_weight(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc, Bf16Kernel kernel) {
  if (m == 0 || n == 0) return;
  const bool avx512_bf16 = resolve_bf16_kernel(kernel) == Bf16Kernel::Avx512Bf16;
  if (m <= kSkinnyRows || k == 0) {
    if (kernel_set() == KernelSet::Avx512 && k > 0)
      return gemm_avx512_stream_bf16(m, n, k, a, lda, b, ldb, c, ldc);
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
  if (kernel_set() == KernelSet::Avx512 && k > 0)
    return gemm_avx512_stream_bf16_rows(m, j0, j1, k, a, lda, b, ldb, c, ldc);
  skinny_rows(m, j0, j1, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void gemm_rows_as_one(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc) {
  rows_as_one_f32(m, j0, j1, k, a, lda, b, ldb, c, ldc);
}

void gemm_rows_as_one(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  if (kernel_set() == KernelSet::Avx512 && k > 0) {  // its one-row kernel is another: row by row
    for (int64_t r = 0; r < m; ++r)
      gemm_avx512_stream_bf16_rows(1, j0, j1, k, a + r * lda, lda, b, ldb, c + r * ldc, ldc);
    return;
  }
  rows_as_one_bf16(m, j0, j1, k, a, lda, b, ldb, c, ldc);
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
