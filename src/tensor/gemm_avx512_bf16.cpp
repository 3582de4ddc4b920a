#include "tensor/gemm_avx512_bf16.h"

// GCC 12's AVX-512 intrinsics start many results from an "uninitialised" register
// (_mm512_undefined_*) and warn, as -Wuninitialized or -Wmaybe-uninitialized depending on the
// build's target, wherever they are inlined: the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "tensor/bf16.h"

// Compiled for AVX512-BF16 whatever the build's -march: the caller checks the CPU first (the
// streaming kernels need AVX-512 F/BW only, the tiles AVX512-BF16 too).
#define MOE_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define MOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace moe {

namespace {

// The 16 lanes added pairwise, in the order _mm512_reduce_add_ps adds them.
MOE_AVX512 inline float sum_lanes(__m512 v) {
  alignas(64) float lane[16];
  _mm512_store_ps(lane, v);
  for (int width = 8; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

// A tile is 4 rows of A by 4 rows of B: 16 accumulators and 8 operands fill 24 of the 32 zmm
// registers, and each 64-byte load feeds 4 vdpbf16ps.
constexpr int64_t kTile = 4;
constexpr int64_t kMaxStreamRows = 6;  // rows of A the streaming kernel takes (gemm's few-row path)

MOE_AVX512_BF16 inline __m512bh as_bf16x32(__m512i v) {
  __m512bh r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

// One step of 32 along k: acc[i][j] += pair products of a_rows[i] and b_rows[j] (zeros where
// the mask is off).
MOE_AVX512_BF16 inline void dot_step(const uint16_t* const (&a_rows)[kTile],
                                     const uint16_t* const (&b_rows)[kTile], int64_t at,
                                     __mmask32 mask, __m512 (&acc)[kTile][kTile]) {
  __m512bh av[kTile], bv[kTile];
  for (int64_t r = 0; r < kTile; ++r) {
    av[r] = as_bf16x32(_mm512_maskz_loadu_epi16(mask, a_rows[r] + at));
    bv[r] = as_bf16x32(_mm512_maskz_loadu_epi16(mask, b_rows[r] + at));
  }
  for (int64_t i = 0; i < kTile; ++i)
    for (int64_t j = 0; j < kTile; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av[i], bv[j]);
}

// out[i][j] = sum over k of a_rows[i][k] * b_rows[j][k], pairs of bf16 products summed in fp32
// lanes (vdpbf16ps), then the 16 lanes added. The tail of k is loaded masked (zeros).
MOE_AVX512_BF16 void dot_tile(const uint16_t* const (&a_rows)[kTile],
                              const uint16_t* const (&b_rows)[kTile], int64_t k,
                              float (&out)[kTile][kTile]) {
  __m512 acc[kTile][kTile];
  for (auto& row : acc)
    for (auto& v : row) v = _mm512_setzero_ps();
  int64_t at = 0;
  for (; at + 32 <= k; at += 32) dot_step(a_rows, b_rows, at, ~__mmask32{0}, acc);
  if (at < k) dot_step(a_rows, b_rows, at, (__mmask32{1} << (k - at)) - 1, acc);
  for (int64_t i = 0; i < kTile; ++i)
    for (int64_t j = 0; j < kTile; ++j) out[i][j] = sum_lanes(acc[i][j]);
}

// One row of A against one row of B (a decode step's products): four accumulators over 64
// weights a step, so no add waits on the one before, and B read kRowPrefetch bytes ahead of
// the loads (into the next row at the end: rows are back to back). With two accumulators and
// the hardware prefetcher alone, mixtral-d1024's bf16 decode ran 10-20% slower in the same
// minutes. (gemm.cpp's fp32 one-row loop stays as it is: written this way it made the fp32
// decode about 10% slower, though one matrix alone streamed as fast.)
// The tail of k goes 16 at a time, masked, into the first accumulator; then the four are added
// (0 + 1) + (2 + 3) and the 16 lanes summed.
constexpr int64_t kRowPrefetch = 1024;

MOE_AVX512 inline void prefetch_ahead(const void* at) {
  _mm_prefetch(static_cast<const char*>(at) + kRowPrefetch, _MM_HINT_T0);
}

MOE_AVX512 inline float sum_of(__m512 (&acc)[4]) {
  return sum_lanes(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// 16 bf16 weights as fp32: zero-extended, shifted into the top half. Exact.
MOE_AVX512 inline __m512 widen(__m256i half) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

MOE_AVX512 float dot_row_bf16(const float* a, const uint16_t* b, int64_t k) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= k; i += 64) {
    prefetch_ahead(b + i);  // a step reads two 64-byte lines of B
    prefetch_ahead(b + i + 32);
    for (int64_t q = 0; q < 4; ++q) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i + 16 * q));
      acc[q] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * q), widen(w), acc[q]);
    }
  }
  for (; i < k; i += 16) {
    const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
    acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i),
                             widen(_mm256_maskz_loadu_epi16(mask, b + i)), acc[0]);
  }
  return sum_of(acc);
}

// c[r, j] = sum_i a[r, i] * widen(b[j, i]) for r < m <= kMaxStreamRows, j in [j0, j1): each row
// of B is read once, 32 weights a step widened exactly (zero-extend, shift into an fp32's top
// half), two accumulators per row of A so consecutive FMAs do not wait on each other.
MOE_AVX512 void stream_rows(int64_t m, int64_t k, const float* a, int64_t lda, const uint16_t* b,
                            int64_t ldb, float* c, int64_t ldc, int64_t j0, int64_t j1) {
  if (m == 1) {
    for (int64_t j = j0; j < j1; ++j) c[j] = dot_row_bf16(a, b + j * ldb, k);
    return;
  }
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* bj = b + j * ldb;
    __m512 acc[kMaxStreamRows][2];
    for (int64_t r = 0; r < m; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
      const __m512 w0 = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + i)));
      const __m512 w1 = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + i + 16)));
      for (int64_t r = 0; r < m; ++r) {
        const float* ar = a + r * lda + i;
        acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(ar), w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(ar + 16), w1, acc[r][1]);
      }
    }
    for (; i < k; i += 16) {  // the tail, 16 at a time, masked
      const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
      const __m512 w = widen(_mm256_maskz_loadu_epi16(mask, bj + i));
      for (int64_t r = 0; r < m; ++r)
        acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + r * lda + i), w, acc[r][0]);
    }
    for (int64_t r = 0; r < m; ++r) c[r * ldc + j] = sum_lanes(_mm512_add_ps(acc[r][0], acc[r][1]));
  }
}

}  // namespace

void gemm_avx512_stream_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                             const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  // Threads split the rows of B (inline when already inside a parallel region, an expert per
  // thread, or when the weight is too small to share).
  if (omp_in_parallel() || n * k < (int64_t{1} << 16))
    return stream_rows(m, k, a, lda, b, ldb, c, ldc, 0, n);
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    stream_rows(m, k, a, lda, b, ldb, c, ldc, n * t / threads, n * (t + 1) / threads);
  }
}

void gemm_avx512_stream_bf16_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a,
                                  int64_t lda, const uint16_t* b, int64_t ldb, float* c,
                                  int64_t ldc) {
  stream_rows(m, k, a, lda, b, ldb, c, ldc, j0, j1);
}

void gemm_avx512_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  std::vector<uint16_t> a_bf16(static_cast<size_t>(m * k));  // [m, k], rounded once
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < k; ++i) a_bf16[r * k + i] = float_to_bf16(a[r * lda + i]);

  // Threads split the rows of B: each tile of B stays in L1 while every row of A (in L2)
  // passes it, so B is read from memory once. Edge tiles repeat the last row and store less.
  const int64_t b_tiles = (n + kTile - 1) / kTile;
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < b_tiles; ++bt) {
    const int64_t j0 = bt * kTile;
    const uint16_t* b_rows[kTile];
    for (int64_t j = 0; j < kTile; ++j) b_rows[j] = b + std::min(j0 + j, n - 1) * ldb;
    for (int64_t i0 = 0; i0 < m; i0 += kTile) {
      const uint16_t* a_rows[kTile];
      for (int64_t i = 0; i < kTile; ++i) a_rows[i] = a_bf16.data() + std::min(i0 + i, m - 1) * k;
      float out[kTile][kTile];
      dot_tile(a_rows, b_rows, k, out);
      for (int64_t i = 0; i < std::min(kTile, m - i0); ++i)
        for (int64_t j = 0; j < std::min(kTile, n - j0); ++j)
          c[(i0 + i) * ldc + j0 + j] = out[i][j];
    }
  }
}

}  // namespace moe
