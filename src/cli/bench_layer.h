#pragma once
// `moe bench layer`: MoE layer throughput against a dense SwiGLU of equal active FLOPs and a
// plain sgemm, all measured in the same run.
#include <cstdint>
#include <string>
#include <vector>

namespace moe::cli {

struct BenchLayerOptions {
  std::vector<std::string> cases = {"mixtral", "deepseek"};
  std::vector<int64_t> tokens = {16, 256, 2048, 8192};
  double min_seconds = 0.5;  // per measurement, after one warm-up call
  bool json = false;
};

int run_bench_layer(const BenchLayerOptions& options);

}  // namespace moe::cli
