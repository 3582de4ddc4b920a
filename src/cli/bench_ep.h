#pragma once
// `moe bench ep` (under mpirun -np P): one MoE layer's forward+backward with its experts spread
// over the P ranks, the seconds in the all-to-all token exchange against the rest, the bytes
// sent per token against the model on paper, and the same layer with every expert local.
#include <cstdint>
#include <string>

#include "parallel/mpi_world.h"

namespace moe::cli {

struct BenchEpOptions {
  std::string config;     // model config whose MoE layer is measured; empty = the default model
  int64_t tokens = 4096;  // tokens per rank
  int64_t iterations = 20;
  bool json = false;
};

int run_bench_ep(const BenchEpOptions& options, MpiWorld* world);

}  // namespace moe::cli
