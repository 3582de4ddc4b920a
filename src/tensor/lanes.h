#pragma once
// Sixteen fp32 lanes as two 8-wide GCC vectors, for kernels compiled per kernel set
// (tensor/dispatch.h). The compiler maps an 8-wide vector onto whatever the target has (two SSE
// registers, one AVX register), and the lanes' arithmetic is the same in every set: a dot product
// summed into lanes i mod 16, then the lanes added pairwise, gives the same bits everywhere. (A
// float[16] array does the same arithmetic, but GCC keeps such an array in memory across a loop;
// one 16-wide vector it splits badly on AVX2.)
#include <cstdint>
#include <cstring>

namespace moe {

typedef float F32x8 __attribute__((vector_size(32)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint32_t U32x8 __attribute__((vector_size(32)));

struct Lanes16 {
  F32x8 lo = {}, hi = {};
};

inline void load8(F32x8& v, const float* p) {
  std::memcpy(&v, p, sizeof v);
}
// 8 bf16 values widened exactly: each into the top half of an fp32.
inline void load8(F32x8& v, const uint16_t* p) {
  U16x8 half;
  std::memcpy(&half, p, sizeof half);
  const U32x8 bits = __builtin_convertvector(half, U32x8) << 16;
  std::memcpy(&v, &bits, sizeof v);
}

inline void load16(Lanes16& v, const float* p) {
  load8(v.lo, p);
  load8(v.hi, p + 8);
}
inline void load16(Lanes16& v, const uint16_t* p) {
  load8(v.lo, p);
  load8(v.hi, p + 8);
}

// acc += a * b, lane by lane.
inline void add_products(Lanes16& acc, const Lanes16& a, const Lanes16& b) {
  acc.lo += a.lo * b.lo;
  acc.hi += a.hi * b.hi;
}

// The 16 lanes added pairwise: (0 + 8) then (0 + 4), (0 + 2), (0 + 1).
inline float lane_total(const Lanes16& acc) {
  float lane[16];
  std::memcpy(lane, &acc.lo, sizeof acc.lo);
  std::memcpy(lane + 8, &acc.hi, sizeof acc.hi);
  for (int width = 8; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

// The last n < 16 values of a row, zero-padded to 16 lanes (zeros add nothing to a sum of
// products: the tail lands in lanes 0..n-1 as a loop over i mod 16 would put it).
template <typename T>
inline void load_tail(Lanes16& v, const T* p, int64_t n) {
  T padded[16] = {};
  std::memcpy(padded, p, static_cast<size_t>(n) * sizeof(T));
  load16(v, padded);
}

// The sum of a[i] * b[i] for i < n in 16 lanes: a fp32, b fp32 or bf16.
template <typename T>
inline float lane_dot(const float* a, const T* b, int64_t n) {
  Lanes16 acc, x, y;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    load16(x, a + i);
    load16(y, b + i);
    add_products(acc, x, y);
  }
  if (i < n) {
    load_tail(x, a + i, n - i);
    load_tail(y, b + i, n - i);
    add_products(acc, x, y);
  }
  return lane_total(acc);
}

}  // namespace moe
