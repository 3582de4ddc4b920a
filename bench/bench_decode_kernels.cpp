// The kernels under decode and prefill with weights in fp32 and bf16, on Mixtral-d1024's
// expert shape (F = 2816, D = 1024), beside the machine's streaming read bandwidth measured in
// the same run. Decode (1 row) reads each weight once: its bytes/s over the bandwidth is the
// share of the limit it reaches. Prefill (128 rows) is compute: its FLOP/s against sgemm's.
//   bench/bench_decode_kernels --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vector>

#include "tensor/bandwidth.h"
#include "tensor/bf16.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace {

using namespace moe;

constexpr int64_t kRows = 2816, kCols = 1024;
// Decode cycles through enough weight matrices (> 200 MB in fp32) that none stays in cache.
constexpr int64_t kMatrices = 24;

void BM_ReadBandwidth(benchmark::State& state) {
  double best = 0;
  for (auto _ : state) best = measure_read_bandwidth(int64_t{1} << 30, 3);
  state.counters["GB/s"] = best / 1e9;
}
BENCHMARK(BM_ReadBandwidth)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

struct Weights {
  std::vector<Tensor> f32;
  std::vector<std::vector<uint16_t>> bf16;
  Weights() {
    Rng rng(1);
    for (int64_t m = 0; m < kMatrices; ++m) {
      Tensor w({kRows, kCols});
      rng.fill_normal(w.span(), 0, 0.02f);
      std::vector<uint16_t> h(static_cast<size_t>(w.numel()));
      for (int64_t i = 0; i < w.numel(); ++i) h[static_cast<size_t>(i)] = float_to_bf16(w[i]);
      f32.push_back(std::move(w));
      bf16.push_back(std::move(h));
    }
  }
};
const Weights& weights() {
  static const Weights w;
  return w;
}

// state.range(0): 0 = fp32 weights, 1 = bf16 (kernel Auto), 2 = bf16 widened to sgemm.
void run(benchmark::State& state, int64_t rows) {
  const Weights& w = weights();
  const int64_t kind = state.range(0);
  Tensor x({rows, kCols}), y({rows, kRows});
  Rng(2).fill_normal(x.span(), 0, 1);
  int64_t m = 0;
  for (auto _ : state) {
    if (kind == 0)
      gemm(Trans::No, Trans::Yes, rows, kRows, kCols, 1.0f, x.data(), kCols, w.f32[m].data(), kCols,
           0.0f, y.data(), kRows);
    else
      gemm_bf16_weight(rows, kRows, kCols, x.data(), kCols, w.bf16[m].data(), kCols, y.data(),
                       kRows, kind == 1 ? Bf16Kernel::Auto : Bf16Kernel::WidenToSgemm);
    benchmark::DoNotOptimize(y.data());
    m = (m + 1) % kMatrices;
  }
  const double weight_bytes = double(kRows) * kCols * (kind == 0 ? 4 : 2);
  state.counters["weight_GB/s"] =
      benchmark::Counter(weight_bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * rows * kRows * kCols / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(kind == 0 ? "f32" : kind == 1 ? "bf16 auto" : "bf16 widen+sgemm");
}

void BM_Decode(benchmark::State& state) {
  run(state, 1);
}
void BM_Prefill128(benchmark::State& state) {
  run(state, 128);
}
BENCHMARK(BM_Decode)->Arg(0)->Arg(1)->UseRealTime();
BENCHMARK(BM_Prefill128)->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
