#pragma once
// `moe params`: total and active parameters and forward FLOPs per token of a preset or a
// config file; with neither, a table of every preset. With --batch-size or --seq-len, also
// the memory `moe train` estimates it needs at that batch (model/memory_estimate.h), against
// what this machine allows.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace moe::cli {

struct ParamsOptions {
  std::string preset;
  std::string config;
  int64_t context = 0;  // 0 = the architecture's own
  bool json = false;
  int64_t batch_size = 0;  // > 0 (or seq_len > 0): print the training memory estimate
  int64_t seq_len = 0;     // the other one defaults to moe train's
};

// Registers --batch-size and --seq-len on the `params` command.
void add_params_memory_options(CLI::App& params, ParamsOptions& options);

int run_params(const ParamsOptions& options);

}  // namespace moe::cli
