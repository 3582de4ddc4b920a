#pragma once
// `moe train`.
#include <CLI/CLI.hpp>
#include <string>

#include "parallel/mpi_world.h"
#include "train/trainer.h"

namespace moe::cli {

struct TrainCommand {
  TrainOptions options;
  std::string resume;       // run folder to continue
  bool force = false;       // replace the run in --out
  bool no_sample = false;   // no short generation at the end
  int expert_parallel = 1;  // processes the run spans (mpirun -np P)
  // --cache-dir; when not given, default_token_cache_dir() (text/token_cache.h)
  std::string cache_dir;
  MpiWorld* world = nullptr;  // set under mpirun
  CLI::App* app = nullptr;    // set by add_train_command: which options were given
};

// Registers `train` and its options on `app`, bound to `command`.
CLI::App* add_train_command(CLI::App& app, TrainCommand& command);
// Returns the exit code: 0, or 128 + the signal when SIGINT / SIGTERM stopped the run (after
// saving it).
int run_train(TrainCommand command);

}  // namespace moe::cli
