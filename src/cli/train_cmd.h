#pragma once
// `moe train`.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "train/trainer.h"

namespace moe::cli {

struct TrainCommand {
  TrainOptions options;
  std::string resume;                   // run folder to continue
  bool sample = true;                   // a short generation at the end
  CLI::Option* steps_option = nullptr;  // set by add_train_command: --steps given?
};

// Registers `train` and its options on `app`, bound to `command`.
CLI::App* add_train_command(CLI::App& app, TrainCommand& command);
int run_train(TrainCommand command);

}  // namespace moe::cli
