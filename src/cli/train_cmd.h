#pragma once
// `moe train` and `moe generate`.
#include <cstdint>
#include <string>

#include "infer/generate.h"
#include "train/trainer.h"

namespace moe::cli {

struct TrainCommand {
  TrainOptions options;
  std::string resume;  // run folder to continue
  bool sample = true;  // a short generation at the end
};
int run_train(TrainCommand command, int64_t steps_given);

struct GenerateCommand {
  std::string model;  // run folder
  std::string prompt;
  int64_t max_tokens = 200;
  SamplingOptions sampling;
  uint64_t seed = 0;
};
int run_generate(const GenerateCommand& command);

}  // namespace moe::cli
