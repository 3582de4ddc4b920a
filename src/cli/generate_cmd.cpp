#include "cli/generate_cmd.h"

#include <algorithm>
#include <cstdio>
#include <string_view>

#include "model/checkpoint.h"
#include "train/checkpoint.h"
#include "train/tokenizer.h"

namespace moe::cli {

CLI::App* add_generate_command(CLI::App& app, GenerateCommand& c) {
  CLI::App* generate = app.add_subcommand("generate", "Generate text from a trained run");
  generate->add_option("--model", c.model, "Run folder")->required()->check(CLI::ExistingDirectory);
  generate->add_option("--prompt", c.prompt, "Prompt text")->required();
  generate->add_option("--max-tokens", c.max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  generate->add_option("--temperature", c.sampling.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  generate->add_option("--top-k", c.sampling.top_k, "0 = all")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-p", c.sampling.top_p, "Nucleus mass")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  generate->add_option("--seed", c.seed, "Sampling seed")->capture_default_str();
  return generate;
}

// The whole text is decoded after every token and the new part printed; a trailing U+FFFD (an
// incomplete byte sequence the next byte-fallback piece may complete) is held back until it
// resolves.
void stream_generation(const std::string& run, const std::string& prompt, int64_t max_tokens,
                       const SamplingOptions& sampling, uint64_t seed) {
  recover_for_reading(run);  // finishes or undoes a save a kill interrupted, as --resume does
  LoadedModel m = load_model(run);
  const Tokenizer tokenizer(run + "/tokenizer.model");
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(tokenizer.eos_id());
  std::string printed;
  auto emit = [&](bool final) {
    std::string text = tokenizer.decode(ids);
    constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    while (!final && text.ends_with(kReplacement)) text.resize(text.size() - kReplacement.size());
    const size_t common =
        std::mismatch(text.begin(), text.end(), printed.begin(), printed.end()).first -
        text.begin();
    if (text.size() > common) std::fwrite(text.data() + common, 1, text.size() - common, stdout);
    std::fflush(stdout);
    printed = std::move(text);
  };
  emit(false);
  generate(*m.model, ids, max_tokens, sampling, seed, tokenizer.eos_id(), [&](int32_t t) {
    ids.push_back(t);
    emit(false);
  });
  emit(true);
  std::fputc('\n', stdout);
}

int run_generate(const GenerateCommand& c) {
  stream_generation(c.model, c.prompt, c.max_tokens, c.sampling, c.seed);
  return 0;
}

}  // namespace moe::cli
