#pragma once
// `moe generate`: text from a trained run, streamed to stdout.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "infer/generate.h"

namespace moe::cli {

struct GenerateCommand {
  std::string model;  // run folder
  std::string prompt;
  int64_t max_tokens = 200;
  SamplingOptions sampling;
  uint64_t seed = 0;
};

// Registers `generate` and its options on `app`, bound to `command`.
CLI::App* add_generate_command(CLI::App& app, GenerateCommand& command);
int run_generate(const GenerateCommand& command);

// Streams `prompt`'s continuation from the run folder `run` to stdout.
void stream_generation(const std::string& run, const std::string& prompt, int64_t max_tokens,
                       const SamplingOptions& sampling, uint64_t seed);

}  // namespace moe::cli
