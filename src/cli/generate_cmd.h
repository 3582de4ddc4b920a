#pragma once
// `moe generate`: text from a trained run, streamed to stdout; how it stopped and its speed
// go to stderr.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "cli/prompt.h"
#include "infer/generate.h"
#include "infer/inference_model.h"

namespace moe::cli {

struct GenerateCommand {
  std::string model;  // run folder or Hugging Face folder
  PromptOptions prompt;
  int64_t max_tokens = 200;
  std::string stop;  // stop before the first occurrence of this text in the generated part
  SamplingOptions sampling;
  std::string seed = "-1";   // -1 = random
  bool verbose = false;      // per MoE layer, the experts generation used (stderr)
  InferenceOptions decoder;  // a Hugging Face folder's expert cache and prefetch
  std::string cache_policy = "lru";
};

// The experts each MoE layer used while generating: every routed expert of every decoded
// token, and the route of the last one (for sequence routing, the route it settled on).
struct GenerationRouting {
  std::vector<int64_t> layers;                               // MoE block indices
  std::vector<std::set<int32_t>> touched;                    // [layer] distinct experts
  std::vector<std::vector<std::pair<int32_t, float>>> last;  // [layer] (expert, gate)
};

// Registers `generate` and its options on `app`, bound to `command`.
CLI::App* add_generate_command(CLI::App& app, GenerateCommand& command);
int run_generate(const GenerateCommand& command);

// Streams `prompt` and its continuation from the run folder or Hugging Face folder `run` to
// stdout. With a non-empty `stop`, generation ends where the generated text first contains it,
// and the output ends just before it. decoder_options (the expert cache) apply to a Hugging
// Face folder, which runs mapped.
Generation stream_generation(const std::string& run, const std::string& prompt, int64_t max_tokens,
                             const SamplingOptions& sampling, uint64_t seed,
                             const std::string& stop = {}, GenerationRouting* routing = nullptr,
                             const InferenceOptions& decoder_options = {});

}  // namespace moe::cli
