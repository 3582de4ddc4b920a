#pragma once
// `moe eval`: a run's loss and routing figures (analysis/eval.h), or several runs side by side.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "analysis/eval.h"

namespace moe::cli {

struct EvalCommand {
  std::vector<std::string> models;  // one run, or several to compare
  EvalOptions options;
  std::string split = "valid";
  double capacity_factor = -1;  // < 0: the config's
  bool json = false;
};

// Registers `eval` and its options on `app`, bound to `command`.
CLI::App* add_eval_command(CLI::App& app, EvalCommand& command);
int run_eval(EvalCommand command);

}  // namespace moe::cli
