#pragma once
// `moe bench train`: training-step throughput (forward, backward, clipping, AdamW) and peak
// memory of a model config on random tokens, the figures bench/torch_train.py gives for
// PyTorch on the same config, batch and threads.
#include <cstdint>
#include <string>

namespace moe::cli {

struct BenchTrainOptions {
  std::string config;  // empty = the default model
  int64_t batch_size = 16;
  int64_t seq_len = 128;  // beyond the config's max_position_embeddings: raised to it
  int64_t steps = 20;     // timed steps, after 3 warm-up steps
  bool json = false;
};

int run_bench_train(const BenchTrainOptions& options);

}  // namespace moe::cli
