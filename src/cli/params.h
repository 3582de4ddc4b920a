#pragma once
// `moe params`: total and active parameters and forward FLOPs per token of a preset or a
// config file; with neither, a table of every preset.
#include <cstdint>
#include <string>

namespace moe::cli {

struct ParamsOptions {
  std::string preset;
  std::string config;
  int64_t context = 0;  // 0 = the architecture's own
  bool json = false;
};

int run_params(const ParamsOptions& options);

}  // namespace moe::cli
