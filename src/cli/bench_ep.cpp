#include "cli/bench_ep.h"

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/hf_checkpoint.h"
#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "moe/moe_layer.h"
#include "tensor/error.h"
#include "tensor/rng.h"
#include "tensor/system_info.h"
#include "tensor/threads.h"

namespace moe::cli {
namespace {

struct Timing {
  double seconds = 0;           // per forward+backward, mean over ranks
  double exchange_seconds = 0;  // of which in the exchange
  double bytes_per_token = 0;   // sent to other ranks, per token of this rank
};

// Mean over iterations (after two warm-up calls) and over ranks of one forward+backward.
Timing time_layer(MpiWorld& world, MoeLayer& layer, int64_t T, int64_t iterations, Tensor& x,
                  Tensor& y, Tensor& dy, Tensor& dx) {
  auto step = [&] {
    layer.forward(x.span(), T, y.span());
    layer.backward(dy.span(), dx.span(), /*accumulate_grads=*/false);
  };
  step();
  step();
  const CommStats before = world.stats();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) step();
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const CommStats& after = world.stats();
  double sums[] = {total, after.exchange_seconds - before.exchange_seconds,
                   double(after.bytes_sent - before.bytes_sent)};
  world.sum(sums);
  const double n = double(iterations) * world.size();
  return {sums[0] / n, sums[1] / n, sums[2] / (n * double(T))};
}

// The result on rank 0: one JSON object, or a few lines of text.
void print_bench_ep(const MoeConfig& cfg, int P, int64_t T, const Timing& ep, const Timing& alone,
                    double model_bytes, bool json) {
  const int64_t D = cfg.hidden_size, k = cfg.top_k;
  if (json) {
    nlohmann::json j = {{"ranks", P},
                        {"tokens_per_rank", T},
                        {"hidden_size", D},
                        {"top_k", k},
                        {"experts", cfg.num_experts},
                        {"threads_per_rank", thread_count()},
                        {"fwd_bwd_s", ep.seconds},
                        {"exchange_s", ep.exchange_seconds},
                        {"compute_s", ep.seconds - ep.exchange_seconds},
                        {"all_local_fwd_bwd_s", alone.seconds},
                        {"bytes_per_token", ep.bytes_per_token},
                        {"model_bytes_per_token", model_bytes},
                        {"system", system_info()}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf(
      "one MoE layer (D %lld, E %lld, k %lld, F %lld), %d ranks, %lld tokens per rank, %d "
      "threads per rank, forward+backward:\n",
      static_cast<long long>(D), static_cast<long long>(cfg.num_experts), static_cast<long long>(k),
      static_cast<long long>(cfg.moe_intermediate_size), P, static_cast<long long>(T),
      thread_count());
  std::printf("  experts spread:   %8.2f ms  (all-to-all %.2f ms = %.0f%%, the rest %.2f ms)\n",
              1e3 * ep.seconds, 1e3 * ep.exchange_seconds, 100.0 * ep.exchange_seconds / ep.seconds,
              1e3 * (ep.seconds - ep.exchange_seconds));
  std::printf("  experts all local: %7.2f ms  (the same tokens, no exchange)\n",
              1e3 * alone.seconds);
  std::printf("  bytes sent per token: %.0f measured, %.0f on paper (4 k D 4 (P-1)/P)\n",
              ep.bytes_per_token, model_bytes);
}

}  // namespace

int run_bench_ep(const BenchEpOptions& o, MpiWorld* world) {
  if (!world || world->size() < 2)
    throw SharedError(
        "moe bench ep runs under mpirun with 2 or more processes: "
        "mpirun -np 2 moe bench ep");
  const int P = world->size();
  ModelConfig model;
  try {
    model = o.config.empty() ? default_model_config() : load_any_model_config(o.config);
    if (!model.moe) throw Error("bench ep: the model config has no MoE layer");
  } catch (const Error& e) {
    throw SharedError(e.what());
  }
  const MoeConfig& cfg = *model.moe;
  if (cfg.num_experts % P != 0)
    throw SharedError("bench ep: " + std::to_string(P) + " ranks do not divide num_experts " +
                      std::to_string(cfg.num_experts));
  const int64_t T = o.tokens, D = cfg.hidden_size, k = cfg.top_k;
  // The sharded layer and the whole one it is checked against (two whole layers: an upper
  // bound). Each rank checks its own machine: one refused ends the job.
  require_memory(estimate_moe_layer_memory(cfg, T, thread_count(), 1, 2),
                 "bench ep at " + std::to_string(T) + " tokens per rank", available_memory(),
                 "fewer --tokens");

  Rng rng(100 + static_cast<uint64_t>(world->rank()));
  Tensor x({T, D}), y({T, D}), dy({T, D}), dx({T, D});
  rng.fill_normal(x.span(), 0, 1);
  rng.fill_normal(dy.span(), 0, 1);

  ParamStore sharded_store;
  MoeLayer sharded(cfg, sharded_store, "moe", 1, world->expert_exchange(cfg.num_experts)());
  sharded_store.allocate();
  Rng init(7);
  sharded.init_parameters(init, 0.02f);
  const Timing ep = time_layer(*world, sharded, T, o.iterations, x, y, dy, dx);

  // The same tokens with every expert on this rank: the expert work per rank is the same in
  // expectation (T k rows), so the difference is what spreading the experts costs.
  ParamStore local_store;
  MoeLayer local(cfg, local_store, "moe", 1);
  local_store.allocate();
  Rng init_local(7);
  local.init_parameters(init_local, 0.02f);
  const Timing alone = time_layer(*world, local, T, o.iterations, x, y, dy, dx);

  // On paper: each token's k rows leave for another rank with probability (P-1)/P, in the
  // dispatch and back in the combine, forward and backward: 4 k D 4 (P-1)/P bytes.
  const double model_bytes = 4.0 * double(k) * double(D) * 4.0 * double(P - 1) / double(P);
  if (world->rank() != 0) return 0;
  print_bench_ep(cfg, P, T, ep, alone, model_bytes, o.json);
  return 0;
}

}  // namespace moe::cli
