// The kernel sets (tensor/cpu.h): names, refusals, and every set this CPU runs giving the
// generic set's bits for each kernel compiled per set. The sets differ only in vector width,
// and every sum runs in a fixed order of 16 lanes, so the bits must be equal, not close. The
// one exception is the AVX-512 set's bf16 streaming kernel, written with intrinsics (fused
// multiply-adds, its own order): it is held to the widened product's tolerance instead.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <functional>
#include <vector>

#include "nn/attention.h"
#include "nn/swiglu.h"
#include "tensor/bf16.h"
#include "tensor/cpu.h"
#include "tensor/error.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "tensor/vector_ops.h"
#include "test_util.h"

namespace moe {
namespace {
using test::error_of;

std::vector<KernelSet> supported_sets() {
  std::vector<KernelSet> sets;
  for (KernelSet set : {KernelSet::Generic, KernelSet::Avx2, KernelSet::Avx512})
    if (cpu_supports(set)) sets.push_back(set);
  return sets;
}

// Runs `compute` under every supported set and expects the generic set's bits (or, where
// `tolerance` says so, values within it); the set in use before is restored.
void expect_same_under_every_set(const std::function<std::vector<float>()>& compute,
                                 const std::function<double(KernelSet, size_t)>& tolerance = {}) {
  const KernelSet before = kernel_set();
  set_kernel_set(KernelSet::Generic);
  const std::vector<float> want = compute();
  for (KernelSet set : supported_sets()) {
    set_kernel_set(set);
    const std::vector<float> got = compute();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const double tol = tolerance ? tolerance(set, i) : 0.0;
      if (tol == 0.0)
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
            << kernel_set_name(set) << " at " << i << ": " << got[i] << " vs " << want[i];
      else
        ASSERT_NEAR(got[i], want[i], tol) << kernel_set_name(set) << " at " << i;
    }
  }
  set_kernel_set(before);
}

TEST(KernelSets, NamesAndRefusals) {
  for (KernelSet set : {KernelSet::Generic, KernelSet::Avx2, KernelSet::Avx512})
    EXPECT_EQ(parse_kernel_set(kernel_set_name(set)), set);
  EXPECT_NE(error_of([] { parse_kernel_set("avx3"); }).find("generic, avx2, avx512"),
            std::string::npos);
  EXPECT_TRUE(cpu_supports(KernelSet::Generic));
  EXPECT_TRUE(cpu_supports(best_kernel_set()));
  EXPECT_TRUE(cpu_supports(kernel_set()));
  if (!cpu_supports(KernelSet::Avx512)) {
    EXPECT_NE(error_of([] { set_kernel_set(KernelSet::Avx512); }).find("lacks"), std::string::npos);
  }
}

// Few-row products (decode): every row count the kernel takes (4 at a time, then 3, 2, 1) and
// k around the 16 lanes (tails of every length).
TEST(KernelSets, FewRowProductsGiveTheGenericBits) {
  Rng rng(3);
  const int64_t N = 37;
  for (int64_t M = 1; M <= 6; ++M)
    for (const int64_t K : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{33}, int64_t{1000}}) {
      SCOPED_TRACE("M=" + std::to_string(M) + " K=" + std::to_string(K));
      std::vector<float> a(M * K), wf(N * K), scale(M * N, 0.0f);
      rng.fill_normal(a, 0, 1);
      rng.fill_normal(wf, 0, 1);
      std::vector<uint16_t> w(wf.size());
      for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_bf16(wf[i]);
      for (int64_t r = 0; r < M; ++r)
        for (int64_t j = 0; j < N; ++j)
          for (int64_t i = 0; i < K; ++i)
            scale[r * N + j] += std::abs(a[r * K + i] * bf16_to_float(w[j * K + i]));
      expect_same_under_every_set([&] {
        std::vector<float> c(M * N);
        gemm_few_rows(M, 0, N, K, a.data(), K, wf.data(), K, c.data(), N);
        return c;
      });
      expect_same_under_every_set(
          [&] {
            std::vector<float> c(M * N);
            gemm_few_rows(M, 0, N, K, a.data(), K, w.data(), K, c.data(), N);
            return c;
          },
          [&](KernelSet set, size_t i) {
            return set == KernelSet::Avx512 ? 1e-6 * scale[i] + 1e-30 : 0.0;
          });
    }
}

// A batch of rows through gemm_rows_as_one: each row's outputs are the bits the one-row kernel
// gives it alone, under every kernel set, fp32 and bf16, even and odd row counts, k around the
// 32 weights of a step (tails of every length).
TEST(KernelSets, RowsAsOneGiveEachRowsOwnBits) {
  Rng rng(5);
  const int64_t N = 29;
  const KernelSet before = kernel_set();
  for (KernelSet set : supported_sets()) {
    set_kernel_set(set);
    for (const int64_t M : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{8}})
      for (const int64_t K : {int64_t{1}, int64_t{16}, int64_t{31}, int64_t{33}, int64_t{1000}}) {
        SCOPED_TRACE(std::string(kernel_set_name(set)) + " M=" + std::to_string(M) +
                     " K=" + std::to_string(K));
        std::vector<float> a(M * K), wf(N * K);
        rng.fill_normal(a, 0, 1);
        rng.fill_normal(wf, 0, 1);
        std::vector<uint16_t> w(wf.size());
        for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_bf16(wf[i]);
        std::vector<float> batch(M * N), batch16(M * N), alone(N), alone16(N);
        gemm_rows_as_one(M, 3, N, K, a.data(), K, wf.data(), K, batch.data(), N);
        gemm_rows_as_one(M, 3, N, K, a.data(), K, w.data(), K, batch16.data(), N);
        for (int64_t r = 0; r < M; ++r) {
          gemm_few_rows(1, 3, N, K, a.data() + r * K, K, wf.data(), K, alone.data(), N);
          gemm_few_rows(1, 3, N, K, a.data() + r * K, K, w.data(), K, alone16.data(), N);
          for (int64_t j = 3; j < N; ++j) {
            ASSERT_EQ(std::bit_cast<uint32_t>(batch[r * N + j]), std::bit_cast<uint32_t>(alone[j]))
                << "fp32 row " << r << " column " << j;
            ASSERT_EQ(std::bit_cast<uint32_t>(batch16[r * N + j]),
                      std::bit_cast<uint32_t>(alone16[j]))
                << "bf16 row " << r << " column " << j;
          }
        }
      }
  }
  set_kernel_set(before);
}

TEST(KernelSets, RowKernelsGiveTheGenericBits) {
  Rng rng(4);
  for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{16}, int64_t{100}, int64_t{4099}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> x(n), y(n);
    rng.fill_normal(x, 0, 3);
    rng.fill_normal(y, 0, 3);
    expect_same_under_every_set([&] {
      std::vector<float> out(n), scaled = x, expd = x, gated(n);
      const float m = max_value(x.data(), n);
      const float sum = exp_shifted_sum(x.data(), out.data(), n, m);
      exp_shifted(expd.data(), n, m);
      scale_values(scaled.data(), n, 0.37f);
      silu_gate(gated.data(), x.data(), y.data(), n);
      std::vector<float> all = {m, sum, dot(x.data(), y.data(), n)};
      for (const auto* v : {&out, &expd, &scaled, &gated})
        all.insert(all.end(), v->begin(), v->end());
      return all;
    });
  }
}

// One token against a KV cache, at head dims that take every path of the kernel.
TEST(KernelSets, AttentionDecodeGivesTheGenericBits) {
  for (const int64_t hd : {8, 40, 64, 80, 128}) {
    SCOPED_TRACE("head_dim " + std::to_string(hd));
    const AttentionShape s{1, 1, 0, /*heads=*/4, /*kv_heads=*/2, hd};
    const int64_t positions = 21, KVW = 2 * hd;
    Rng rng(5);
    std::vector<float> keys(positions * KVW), values(positions * KVW), qkv(s.qkv_width());
    rng.fill_normal(keys, 0, 1);
    rng.fill_normal(values, 0, 1);
    rng.fill_normal(qkv, 0, 1);
    expect_same_under_every_set([&] {
      std::vector<float> scores(positions), ctx(s.ctx_width());
      attention_decode_heads(s, positions - 1, 0, s.heads, qkv, keys, values, scores, ctx);
      return ctx;
    });
  }
}

}  // namespace
}  // namespace moe
