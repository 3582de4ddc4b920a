#pragma once
// `moe tokenize`: a prompt as the model folder's tokenizer splits it, ids and pieces, the ids
// that `moe generate` and `moe logits -p` would feed (BOS included where the folder adds it).
#include <CLI/CLI.hpp>
#include <string>

#include "cli/prompt.h"

namespace moe::cli {

struct TokenizeCommand {
  std::string model;  // run folder or Hugging Face checkpoint folder
  PromptOptions prompt;
  bool ids_only = false;  // one line of comma-separated ids (what `logits --ids` takes)
  bool json = false;
};

CLI::App* add_tokenize_command(CLI::App& app, TokenizeCommand& command);
int run_tokenize(const TokenizeCommand& command);

}  // namespace moe::cli
