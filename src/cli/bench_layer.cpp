#include "cli/bench_layer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>

#include "model/memory_estimate.h"
#include "moe/moe_layer.h"
#include "nn/swiglu.h"
#include "tensor/blas_info.h"
#include "tensor/error.h"
#include "tensor/gemm.h"
#include "tensor/system_info.h"
#include "tensor/threads.h"

namespace moe::cli {
namespace {

struct BenchCase {
  std::string name;
  MoeConfig config;
  int64_t dense_hidden;  // hidden size of the dense SwiGLU with the same active FLOPs
};

BenchCase make_case(const std::string& name) {
  MoeConfig c;
  c.hidden_size = 512;
  c.aux_loss_type = AuxLossType::Switch;
  if (name == "mixtral") {  // Mixtral-like: 8 experts, top-2, softmax over the top-2 logits
    c.moe_intermediate_size = 1408;
    c.num_experts = 8;
    c.top_k = 2;
    c.router_type = RouterType::TopKSoftmax;
    return {name, c, 2 * 1408};
  }
  if (name == "deepseek") {  // DeepSeek-like: 64 fine-grained experts, top-6, 1 shared
    c.moe_intermediate_size = 176;
    c.num_experts = 64;
    c.top_k = 6;
    c.router_type = RouterType::SigmoidBias;
    c.n_shared_experts = 1;
    c.shared_expert_intermediate_size = 352;
    return {name, c, 6 * 176 + 352};
  }
  throw Error("bench layer: unknown case '" + name + "' (expected mixtral or deepseek)");
}

// Median seconds per call of fn over at least 3 calls and min_seconds, after one warm-up.
double time_call(const std::function<void()>& fn, double min_seconds) {
  using clock = std::chrono::steady_clock;
  fn();
  std::vector<double> samples;
  const auto start = clock::now();
  while (samples.size() < 3 ||
         std::chrono::duration<double>(clock::now() - start).count() < min_seconds) {
    const auto t0 = clock::now();
    fn();
    samples.push_back(std::chrono::duration<double>(clock::now() - t0).count());
  }
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  return samples[samples.size() / 2];
}

double sgemm_gflops(double min_seconds) {
  const int64_t n = 2048;
  Tensor a({n, n}), b({n, n}), c({n, n});
  Rng rng(1);
  rng.fill_normal(a.span(), 0, 1);
  rng.fill_normal(b.span(), 0, 1);
  const double s = time_call(
      [&] {
        gemm(Trans::No, Trans::No, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
      },
      min_seconds);
  return 2.0 * n * n * n / s / 1e9;
}

// Sum of a buffer's values, all threads, read in order: a plain stream of loads.
float sum_all(std::span<const float> values) {
  constexpr int64_t kChunk = 4096;
  const float* p = values.data();
  const auto chunks = static_cast<int64_t>(values.size()) / kChunk;
  float sum = 0.0f;
#pragma omp parallel for schedule(static) reduction(+ : sum)
  for (int64_t c = 0; c < chunks; ++c) {
    const float* chunk = p + c * kChunk;
    float chunk_sum = 0.0f;
#pragma omp simd reduction(+ : chunk_sum)
    for (int64_t i = 0; i < kChunk; ++i) chunk_sum += chunk[i];
    sum += chunk_sum;
  }
  return sum;
}

// Memory bandwidth of the machine, all threads: reading and writing a 256 MiB buffer, far
// larger than any cache. At small T the layer is a stream over the experts' weights, and
// these give the fastest that stream can go.
struct Bandwidth {
  double read_gbs, write_gbs;
};

Bandwidth memory_bandwidth(double min_seconds) {
  Tensor buffer({int64_t{64} << 20});
  buffer.fill(1.0f);
  float sink = 0.0f;
  const double read = time_call([&] { sink += sum_all(buffer.span()); }, min_seconds);
  const double write = time_call([&] { buffer.fill(sink); }, min_seconds);
  const double bytes = 4.0 * static_cast<double>(buffer.numel());
  return {bytes / read / 1e9, bytes / write / 1e9};
}

// What every row is measured against, measured once per run.
struct Machine {
  double sgemm_gflops;
  Bandwidth bandwidth;
  nlohmann::json system;
};

// The weights a fwd+bwd must touch: each expert that got a token (in the last timed call), the
// shared experts and the router, read in the forward, read again and their gradients written
// in the backward. Activations are left out: the limit is optimistic.
double weight_bytes_touched(const MoeConfig& cfg, const RoutingStats& stats) {
  const auto used = std::count_if(stats.kept_per_expert.begin(), stats.kept_per_expert.end(),
                                  [](int64_t rows) { return rows > 0; });
  return 4.0 * cfg.hidden_size *
         (3.0 * (static_cast<double>(used) * cfg.moe_intermediate_size +
                 cfg.n_shared_experts * cfg.shared_expert_intermediate_size) +
          cfg.num_experts);
}

// Seconds per fwd+bwd of the dense SwiGLU with Fd hidden units. x, dy: [T, D] -> y, dx.
double time_dense_swiglu(int64_t Fd, const Tensor& x, const Tensor& dy, Tensor& y, Tensor& dx,
                         Rng& rng, double min_seconds) {
  const int64_t T = x.shape()[0], D = x.shape()[1];
  Tensor w13({2 * Fd, D}), w2({D, Fd}), dw13({2 * Fd, D}), dw2({D, Fd});
  Tensor h13({T, 2 * Fd}), act({T, Fd}), dh13({T, 2 * Fd});
  rng.fill_normal(w13.span(), 0, 0.02f);
  rng.fill_normal(w2.span(), 0, 0.02f);
  return time_call(
      [&] {
        swiglu_forward({T, D, Fd}, x.span(), w13.span(), w2.span(), h13.span(), act.span(),
                       y.span());
        swiglu_backward({T, D, Fd}, x.span(), w13.span(), w2.span(), h13.span(), act.span(),
                        dy.span(), dh13.span(), dx.span(), dw13.span(), dw2.span(), false);
      },
      min_seconds);
}

// One row: the case's MoE layer at T tokens, forward and forward+backward, against the dense
// SwiGLU of equal active FLOPs, the sgemm peak and the memory-bound limit.
nlohmann::json measure_row(const BenchCase& bc, int64_t T, const Machine& machine,
                           double min_seconds) {
  const MoeConfig& cfg = bc.config;
  const int64_t D = cfg.hidden_size;
  ParamStore store;
  MoeLayer layer(cfg, store, "moe", 1);
  store.allocate();
  Rng rng(2);
  layer.init_parameters(rng, 0.02f);
  Tensor x({T, D}), y({T, D}), dy({T, D}), dx({T, D});
  rng.fill_normal(x.span(), 0, 1);
  rng.fill_normal(dy.span(), 0, 1);
  // Gradients overwritten, as PyTorch does after zero_grad(set_to_none=True).
  const double fwd = time_call([&] { layer.forward(x.span(), T, y.span()); }, min_seconds);
  const double fwdbwd = time_call(
      [&] {
        layer.forward(x.span(), T, y.span());
        layer.backward(dy.span(), dx.span(), /*accumulate_grads=*/false);
      },
      min_seconds);
  const double weight_bytes = weight_bytes_touched(cfg, layer.stats());
  const Bandwidth& bw = machine.bandwidth;
  const double memory_limit =
      T / (2.0 * weight_bytes / (bw.read_gbs * 1e9) + weight_bytes / (bw.write_gbs * 1e9));
  const double dense = time_dense_swiglu(bc.dense_hidden, x, dy, y, dx, rng, min_seconds);

  // Active FLOPs per token, forward: 3 GEMMs of D x F per picked and shared expert, plus
  // the router; backward costs twice the forward.
  const double active_hidden =
      static_cast<double>(cfg.top_k * cfg.moe_intermediate_size +
                          cfg.n_shared_experts * cfg.shared_expert_intermediate_size);
  const double fwd_flops = 6.0 * D * active_hidden + 2.0 * D * cfg.num_experts;
  const double gflops = 3.0 * fwd_flops * T / fwdbwd / 1e9;
  return {{"case", bc.name},
          {"tokens", T},
          {"threads", thread_count()},
          {"fwd_tokens_per_s", T / fwd},
          {"fwdbwd_tokens_per_s", T / fwdbwd},
          {"dense_fwdbwd_tokens_per_s", T / dense},
          {"dense_ratio_fwdbwd", fwdbwd / dense},
          {"gflops_fwdbwd", gflops},
          {"sgemm_gflops", machine.sgemm_gflops},
          {"weight_bytes", weight_bytes},
          {"memory_read_gbs", bw.read_gbs},
          {"memory_write_gbs", bw.write_gbs},
          {"memory_limit_fwdbwd_tokens_per_s", memory_limit},
          {"blas_core", blas_core_name()},
          {"system", machine.system}};
}

void print_row(const nlohmann::json& row) {
  const double fwdbwd_rate = row["fwdbwd_tokens_per_s"], gflops = row["gflops_fwdbwd"];
  const double peak = row["sgemm_gflops"], memory_limit = row["memory_limit_fwdbwd_tokens_per_s"];
  std::printf("%-9s %6lld %12.0f %14.0f %8.2f %10.1f %7.0f%% %11.0f%%\n",
              row["case"].get<std::string>().c_str(), row["tokens"].get<long long>(),
              row["fwd_tokens_per_s"].get<double>(), fwdbwd_rate,
              row["dense_ratio_fwdbwd"].get<double>(), gflops, 100.0 * gflops / peak,
              100.0 * fwdbwd_rate / memory_limit);
  std::fflush(stdout);
}

}  // namespace

int run_bench_layer(const BenchLayerOptions& options) {
  // Every row is checked before the first is measured: a refusal comes at once.
  for (const std::string& name : options.cases)
    for (int64_t T : options.tokens)
      require_memory(estimate_moe_layer_memory(make_case(name).config, T, thread_count()),
                     "bench layer --case " + name + " at " + std::to_string(T) + " tokens",
                     available_memory(), "fewer --tokens");
  warn_about_blas_kernel();
  const double peak = sgemm_gflops(options.min_seconds);
  const Bandwidth bandwidth = memory_bandwidth(options.min_seconds);
  if (!options.json)
    std::printf(
        "threads %d, OpenBLAS %s kernels, sgemm 2048^3: %.1f GFLOP/s, memory read %.1f GB/s, "
        "write %.1f GB/s\n%-9s %6s %12s %14s %8s %10s %8s %12s\n",
        thread_count(), blas_core_name(), peak, bandwidth.read_gbs, bandwidth.write_gbs, "case",
        "tokens", "fwd tok/s", "fwd+bwd tok/s", "dense x", "GFLOP/s", "of sgemm", "of mem limit");
  const Machine machine{peak, bandwidth, system_info()};  // the same for every row
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& name : options.cases) {
    const BenchCase bc = make_case(name);
    for (int64_t T : options.tokens) {
      rows.push_back(measure_row(bc, T, machine, options.min_seconds));
      if (!options.json) print_row(rows.back());
    }
  }
  if (options.json) std::printf("%s\n", rows.dump(1).c_str());
  return 0;
}

}  // namespace moe::cli
