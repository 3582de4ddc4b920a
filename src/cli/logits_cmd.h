#pragma once
// `moe logits`: the next-token logits after a prompt (text, or token ids), as raw little-endian
// float32 (vocab_size values), for comparison with any outside tool.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "cli/prompt.h"

namespace moe::cli {

struct LogitsCommand {
  std::string model;              // run folder or Hugging Face checkpoint folder
  std::vector<int64_t> ids;       // --ids, or
  PromptOptions prompt;           // text encoded as `generate` encodes it
  std::string out;                // file to write; "-" = standard output
  std::vector<std::string> dump;  // intermediates by name ("all": every one)
  std::string dump_out;           // the safetensors file they go to
};

CLI::App* add_logits_command(CLI::App& app, LogitsCommand& command);
int run_logits(const LogitsCommand& command);

}  // namespace moe::cli
