// The kernels under decode and prefill with weights in fp32 and bf16, on Mixtral-d1024's
// expert shape (F = 2816, D = 1024), beside the machine's streaming read bandwidth measured in
// the same run. Decode (1 row) reads each weight once: its bytes/s over the bandwidth is the
// share of the limit it reaches. Prefill (128 rows) is compute: its FLOP/s against sgemm's.
// Quantized decode (ggml's block formats, tensor/quant.h): the same shape's matrix-vector
// product, its weight_GB/s counting the quantized bytes read.
//   bench/bench_decode_kernels --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <vector>

#include "tensor/bandwidth.h"
#include "tensor/bf16.h"
#include "tensor/gemm.h"
#include "tensor/quant.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace {

using namespace moe;

constexpr int64_t kRows = 2816, kCols = 1024;
// Decode cycles through enough weight matrices (> 200 MB in fp32) that none stays in cache.
constexpr int64_t kMatrices = 24;

// The bandwidth this run measured (bytes/s), for the rows that report their share of it.
double measured_bandwidth = 0;

void BM_ReadBandwidth(benchmark::State& state) {
  double best = 0;
  for (auto _ : state) best = measure_read_bandwidth(int64_t{1} << 30, 3);
  state.counters["GB/s"] = best / 1e9;
  measured_bandwidth = best;
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

// One matrix per format, quantized once (the K formats' search is slow), then copied until the
// copies pass 256 MB, so that no step finds its weights in cache.
struct QuantizedWeights {
  int64_t matrix_bytes = 0, copies = 0;
  std::vector<uint8_t> bytes;  // copies x [kRows, kCols] quantized
};
const QuantizedWeights& quantized_weights(QuantType type) {
  static std::map<QuantType, QuantizedWeights> cache;
  QuantizedWeights& w = cache[type];
  if (w.copies > 0) return w;
  std::vector<uint8_t> matrix(static_cast<size_t>(kRows * quant_row_bytes(type, kCols)));
  quantize_row(type, weights().f32[0].span(), matrix);
  w.matrix_bytes = std::ssize(matrix);
  w.copies = ((int64_t{256} << 20) + w.matrix_bytes - 1) / w.matrix_bytes;
  for (int64_t c = 0; c < w.copies; ++c)
    w.bytes.insert(w.bytes.end(), matrix.begin(), matrix.end());
  return w;
}

// state.range(0): ggml's type id (8 q8_0, 2 q4_0, 12 q4_K, 13 q5_K, 14 q6_K).
void BM_DecodeQuantized(benchmark::State& state) {
  const auto type = static_cast<QuantType>(state.range(0));
  const QuantizedWeights& w = quantized_weights(type);
  std::vector<float> x(kCols), y(kRows);
  Rng(2).fill_normal(x, 0, 1);
  int64_t m = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const std::span<const uint8_t> matrix(w.bytes.data() + m * w.matrix_bytes,
                                          static_cast<size_t>(w.matrix_bytes));
    quantized_matvec(type, matrix, kRows, kCols, x, y);
    benchmark::DoNotOptimize(y.data());
    m = (m + 1) % w.copies;
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  state.counters["weight_GB/s"] = benchmark::Counter(double(w.matrix_bytes) / 1e9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  // Weight bytes per second over the bandwidth measured above (BM_ReadBandwidth runs first).
  if (measured_bandwidth > 0)
    state.counters["of_bandwidth"] =
        double(w.matrix_bytes) * double(state.iterations()) / elapsed.count() / measured_bandwidth;
  state.SetLabel(std::string(quant_layout(type).name));
}
BENCHMARK(BM_DecodeQuantized)->Arg(8)->Arg(2)->Arg(12)->Arg(13)->Arg(14)->UseRealTime();
BENCHMARK(BM_Prefill128)->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
