#include "cli/bench_train.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "model/hf_checkpoint.h"
#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "model/transformer.h"
#include "nn/optimizer.h"
#include "tensor/blas_info.h"
#include "tensor/system_info.h"
#include "tensor/threads.h"

namespace moe::cli {

int run_bench_train(const BenchTrainOptions& o) {
  warn_about_blas_kernel();
  ModelConfig config = o.config.empty() ? default_model_config() : load_any_model_config(o.config);
  // Memory and speed at long sequences are what --seq-len is for: the context only sizes the
  // RoPE table, so stretch it rather than refuse.
  if (o.seq_len > config.max_position_embeddings) {
    std::fprintf(stderr, "bench train: max_position_embeddings %lld raised to --seq-len %lld\n",
                 static_cast<long long>(config.max_position_embeddings),
                 static_cast<long long>(o.seq_len));
    config.max_position_embeddings = o.seq_len;
  }
  // A batch too large for this machine is refused before anything is allocated.
  TrainingShape shape;
  shape.batch = o.batch_size;
  shape.seq = o.seq_len;
  shape.threads = thread_count();
  require_memory(estimate_training_memory(config, shape),
                 "bench train at --batch-size " + std::to_string(o.batch_size) + " x --seq-len " +
                     std::to_string(o.seq_len),
                 available_memory(), "lower --batch-size or --seq-len");
  ParamStore store;
  Transformer model(config, store, 1);
  store.allocate();
  Rng rng(1);
  model.init_parameters(rng);
  AdamW optimizer(store, {});
  const int64_t B = o.batch_size, S = o.seq_len, T = B * S;
  std::vector<int32_t> tokens(T), targets(T);
  auto step = [&]() {
    for (int64_t i = 0; i < T; ++i) {
      tokens[i] = static_cast<int32_t>(rng.next_u64() % config.vocab_size);
      targets[i] = static_cast<int32_t>(rng.next_u64() % config.vocab_size);
    }
    store.zero_grads();
    model.forward(tokens, targets, B, S);
    model.backward();
    clip_grad_norm(store, 1.0);
    optimizer.step(1e-3f);
  };
  for (int i = 0; i < 3; ++i) step();
  std::vector<double> times;
  for (int64_t i = 0; i < o.steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double peak_mib = double(usage.ru_maxrss) / 1024.0;
  const ParamCount count = count_params(arch_from_model_config(config, "bench"));
  const double tok_s = double(T) / median;
  if (o.json) {
    std::printf("%s\n", nlohmann::json{{"impl", "moe"},
                                       {"total_params", count.total},
                                       {"active_params", count.active},
                                       {"batch_size", B},
                                       {"seq_len", S},
                                       {"threads", thread_count()},
                                       {"blas_core", blas_core_name()},
                                       {"step_seconds_median", median},
                                       {"tokens_per_s", tok_s},
                                       {"peak_rss_mib", peak_mib},
                                       {"system", system_info()}}
                            .dump()
                            .c_str());
  } else {
    std::printf(
        "model %.2fM parameters (%.2fM active), batch %lld x %lld, %d threads, "
        "OpenBLAS %s\n",
        double(count.total) / 1e6, double(count.active) / 1e6, static_cast<long long>(B),
        static_cast<long long>(S), thread_count(), blas_core_name());
    std::printf(
        "training step (fwd+bwd+clip+AdamW): median %.1f ms, %.0f tokens/s, "
        "peak RSS %.0f MiB\n",
        1e3 * median, tok_s, peak_mib);
  }
  return 0;
}

}  // namespace moe::cli
