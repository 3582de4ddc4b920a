// The attention core alone, forward then backward, for the default model's attention (D=256,
// 8 heads, 4 kv heads, head_dim 32) at the default batch (16 x 128) and at long sequences
// (batch 1, 1024 to 8192 positions). Process CPU time is the figure to read on a shared
// machine: it counts the work, not the waits for a core.
// Run: ./build/bench/bench_attention
#include <benchmark/benchmark.h>

#include <vector>

#include "nn/attention.h"
#include "tensor/rng.h"
#include "tensor/threads.h"

namespace moe {
namespace {

void BM_AttentionForwardBackward(benchmark::State& state) {
  set_threads(0);
  const int64_t S = state.range(0), B = S <= 128 ? 16 : 1, D = 256;
  const AttentionShape s{B, S, D, 8, 4, 32};
  const RopeTable rope(s.head_dim, S, 10000.0);
  const int64_t T = s.tokens(), W = s.qkv_width(), C = s.ctx_width();
  std::vector<float> x(T * D), wqkv(W * D), wo(D * C), qkv(T * W), ctx(T * C), lse(B * 8 * S);
  std::vector<float> y(T * D), dy(T * D), dqkv(T * W), dctx(T * C), dx(T * D), dwqkv(W * D);
  std::vector<float> dwo(D * C), scratch(attention_scratch_size(s, thread_count()));
  Rng rng(1);
  rng.fill_normal(x, 0, 1);
  rng.fill_normal(wqkv, 0, 0.1f);
  rng.fill_normal(wo, 0, 0.1f);
  rng.fill_normal(dy, 0, 1);
  for (auto _ : state) {
    attention_forward(s, rope, x, wqkv, wo, qkv, ctx, lse, y, scratch);
    attention_backward(s, rope, x, wqkv, wo, qkv, ctx, lse, dy, dqkv, dctx, dx, dwqkv, dwo,
                       scratch);
    benchmark::DoNotOptimize(dx.data());
  }
  state.SetItemsProcessed(state.iterations() * T);
  state.counters["scratch_MiB"] = double(scratch.size()) * sizeof(float) / (1 << 20);
}
BENCHMARK(BM_AttentionForwardBackward)
    ->Arg(128)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(8192)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace moe
