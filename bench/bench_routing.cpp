// Routing overhead alone (router forward + dispatcher plan/permute/combine, no experts) for
// the shapes of `moe bench layer`: what small batches pay beyond the expert GEMMs.
// Run: ./build/bench/bench_routing
#include <benchmark/benchmark.h>

#include "moe/dispatcher.h"
#include "moe/router.h"
#include "tensor/threads.h"

namespace moe {
namespace {

void routing(benchmark::State& state, int64_t experts, int64_t k, RouterType type) {
  set_threads(0);
  const int64_t T = state.range(0), D = 512;
  MoeConfig c;
  c.hidden_size = D;
  c.num_experts = experts;
  c.top_k = k;
  c.router_type = type;
  ParamStore store;
  Router router(c, store, "gate");
  store.allocate();
  Rng rng(1);
  rng.fill_normal(store.values().span(), 0, 0.02f);
  Tensor x({T, D}), xp({T * k, D}), y({T, D});
  rng.fill_normal(x.span(), 0, 1);
  RoutingPlan plan;
  Dispatcher dispatcher;
  for (auto _ : state) {
    router.forward(x.span(), T, T, true, -1, 1, {}, rng, plan);
    dispatcher.plan(plan, -1, DropPolicy::Probs);
    dispatcher.permute(x.span(), D, xp.span());
    dispatcher.combine(xp.span(), plan.gate, D, y.span());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * T);
}

void BM_RoutingMixtral(benchmark::State& s) {
  routing(s, 8, 2, RouterType::TopKSoftmax);
}
void BM_RoutingDeepSeek(benchmark::State& s) {
  routing(s, 64, 6, RouterType::SigmoidBias);
}
BENCHMARK(BM_RoutingMixtral)->Arg(16)->Arg(256)->Arg(2048);
BENCHMARK(BM_RoutingDeepSeek)->Arg(16)->Arg(256)->Arg(2048);

}  // namespace
}  // namespace moe
