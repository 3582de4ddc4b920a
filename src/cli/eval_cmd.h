#pragma once
// `moe eval`: a run's loss and routing figures (analysis/eval.h), or several runs side by side;
// the perplexity of a text under any model, as llama-perplexity measures it.
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
  // A perplexity as llama-perplexity measures it (analysis/perplexity.h), over chunks of
  // `ctx` tokens: for Hugging Face folders and GGUF files, and for a run with --ctx.
  int64_t ctx = 0;      // 0: not given (512, llama-perplexity's default, capped by the model)
  int64_t chunks = -1;  // at most this many chunks; -1: all
  // Perplexity of a run or Hugging Face folder quantized in memory to this type (q8_0, ...), as
  // `moe quantize` would type it; "" = as stored.
  std::string quantize;
  bool json = false;
};

// Registers `eval` and its options on `app`, bound to `command`.
CLI::App* add_eval_command(CLI::App& app, EvalCommand& command);
int run_eval(EvalCommand command);

}  // namespace moe::cli
