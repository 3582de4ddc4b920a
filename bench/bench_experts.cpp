// The experts alone, against the GEMMs they are made of: for the shapes of `moe bench layer`
// with every expert given T*k/E rows, the real Experts forward+backward next to the same six
// OpenBLAS calls per expert issued bare, one expert per thread. The bare calls are the limit
// the experts can reach with OpenBLAS on these shapes; the gap between the two is SiLU,
// scheduling and the few-row path of `gemm`.
// Run: ./build/bench/bench_experts
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <vector>

#include "moe/experts.h"
#include "tensor/rng.h"
#include "tensor/threads.h"

namespace moe {
namespace {

struct Shape {
  int64_t experts, top_k, hidden;
};
constexpr int64_t kModel = 512;
constexpr Shape kMixtral{8, 2, 1408}, kDeepSeek{64, 6, 176};

void set_counters(benchmark::State& state, const Shape& s, int64_t tokens) {
  // fwd+bwd: 3 GEMMs of D x F per assignment forward, twice that backward.
  const double flops = 18.0 * kModel * s.hidden * tokens * s.top_k;
  state.SetItemsProcessed(state.iterations() * tokens);
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops * 1e-9 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void experts(benchmark::State& state, Shape s) {
  set_threads(0);
  const int64_t T = state.range(0), rows = T * s.top_k / s.experts, n = rows * s.experts;
  ParamStore store;
  Experts ex(s.experts, kModel, s.hidden, store, "experts");
  store.allocate();
  Rng rng(1);
  rng.fill_normal(store.values().span(), 0, 0.02f);
  std::vector<int64_t> offsets(s.experts + 1);
  for (int64_t e = 0; e <= s.experts; ++e) offsets[e] = e * rows;
  Tensor xp({n, kModel}), yp({n, kModel}), dyp({n, kModel}), dxp({n, kModel});
  rng.fill_normal(xp.span(), 0, 1);
  rng.fill_normal(dyp.span(), 0, 1);
  auto step = [&] {
    ex.forward(xp.span(), offsets, yp.span());
    ex.backward(xp.span(), offsets, dyp.span(), dxp.span(), /*accumulate=*/false);
  };
  step();  // grows the workspaces outside the timing
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(dxp.data());
  }
  set_counters(state, s, T);
}

// The six products of a SwiGLU expert's forward and backward, straight to OpenBLAS.
void bare_gemms(benchmark::State& state, Shape s) {
  set_threads(0);
  const int64_t T = state.range(0), m = T * s.top_k / s.experts, D = kModel, F = s.hidden;
  struct Buffers {
    Tensor x, w13, w2, h13, act, y, dy, dw13, dw2, dx;
  };
  std::vector<Buffers> b;
  Rng rng(1);
  for (int64_t e = 0; e < s.experts; ++e) {
    b.push_back({Tensor({m, D}), Tensor({2 * F, D}), Tensor({D, F}), Tensor({m, 2 * F}),
                 Tensor({m, F}), Tensor({m, D}), Tensor({m, D}), Tensor({2 * F, D}), Tensor({D, F}),
                 Tensor({m, D})});
    for (Tensor* t : {&b.back().x, &b.back().w13, &b.back().w2, &b.back().act, &b.back().dy})
      rng.fill_normal(t->span(), 0, 1);
  }
  const auto mi = static_cast<int>(m), Di = static_cast<int>(D), Fi = static_cast<int>(F);
  auto step = [&] {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t e = 0; e < s.experts; ++e) {
      Buffers& q = b[e];
      const CBLAS_ORDER R = CblasRowMajor;
      const CBLAS_TRANSPOSE N = CblasNoTrans, Y = CblasTrans;
      cblas_sgemm(R, N, Y, mi, 2 * Fi, Di, 1, q.x.data(), Di, q.w13.data(), Di, 0, q.h13.data(),
                  2 * Fi);
      cblas_sgemm(R, N, Y, mi, Di, Fi, 1, q.act.data(), Fi, q.w2.data(), Fi, 0, q.y.data(), Di);
      cblas_sgemm(R, Y, N, Di, Fi, mi, 1, q.dy.data(), Di, q.act.data(), Fi, 0, q.dw2.data(), Fi);
      cblas_sgemm(R, N, N, mi, Fi, Di, 1, q.dy.data(), Di, q.w2.data(), Fi, 0, q.h13.data(),
                  2 * Fi);
      cblas_sgemm(R, Y, N, 2 * Fi, Di, mi, 1, q.h13.data(), 2 * Fi, q.x.data(), Di, 0,
                  q.dw13.data(), Di);
      cblas_sgemm(R, N, N, mi, Di, 2 * Fi, 1, q.h13.data(), 2 * Fi, q.w13.data(), Di, 0,
                  q.dx.data(), Di);
    }
  };
  step();
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(b.front().dx.data());
  }
  set_counters(state, s, T);
}

void BM_ExpertsMixtral(benchmark::State& s) {
  experts(s, kMixtral);
}
void BM_BareGemmsMixtral(benchmark::State& s) {
  bare_gemms(s, kMixtral);
}
void BM_ExpertsDeepSeek(benchmark::State& s) {
  experts(s, kDeepSeek);
}
void BM_BareGemmsDeepSeek(benchmark::State& s) {
  bare_gemms(s, kDeepSeek);
}
BENCHMARK(BM_ExpertsMixtral)->Arg(16)->Arg(256)->Arg(2048)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_BareGemmsMixtral)->Arg(16)->Arg(256)->Arg(2048)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_ExpertsDeepSeek)->Arg(16)->Arg(256)->Arg(2048)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_BareGemmsDeepSeek)->Arg(16)->Arg(256)->Arg(2048)->UseRealTime()->MinTime(1.0);

}  // namespace
}  // namespace moe
