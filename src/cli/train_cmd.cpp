#include "cli/train_cmd.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>

#include "model/checkpoint.h"
#include "moe/load_metrics.h"
#include "tensor/error.h"
#include "train/tokenizer.h"

namespace moe::cli {
namespace {

// Streams `prompt`'s continuation to stdout. The whole text is decoded after every token and
// the new part printed; a trailing U+FFFD (an incomplete byte sequence the next byte-fallback
// piece may complete) is held back until it resolves.
void stream_generation(const std::string& run, const std::string& prompt, int64_t max_tokens,
                       const SamplingOptions& sampling, uint64_t seed) {
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

}  // namespace

int run_train(TrainCommand c, int64_t steps_given) {
  const bool resume = !c.resume.empty();
  if (resume) c.options.out_dir = c.resume;
  const TrainResult r = train(c.options, resume, resume ? steps_given : 0);
  const std::string dir = c.options.out_dir;
  std::printf("run folder: %s (step %lld)\n", dir.c_str(), static_cast<long long>(r.steps_done));
  std::printf("final training loss %.4f", r.final_loss);
  if (!std::isnan(r.val_loss))
    std::printf(", validation loss %.4f (perplexity %.1f)", r.val_loss, std::exp(r.val_loss));
  std::printf("\n");

  // Expert-load summary: the last monitored line of metrics.jsonl.
  std::ifstream metrics(dir + "/metrics.jsonl");
  std::string line, last_experts;
  while (std::getline(metrics, line))
    if (line.find("\"experts\"") != std::string::npos) last_experts = line;
  if (!last_experts.empty()) {
    const auto j = nlohmann::json::parse(last_experts);
    std::printf("expert load over the last %lld steps (one bar per expert):\n",
                static_cast<long long>(c.options.monitor_every));
    for (const auto& layer : j.at("experts")) {
      const auto counts = layer.at("counts").get<std::vector<int64_t>>();
      const LoadMetrics lm = load_metrics(counts);
      std::printf("  layer %2lld |%s|  gini %.3f  entropy %.3f  max/mean %.2f  drop %.1f%%\n",
                  layer.at("layer").get<long long>(), load_bars(counts).c_str(), lm.gini,
                  lm.normalized_entropy, lm.max_over_mean,
                  100.0 * layer.at("drop_rate").get<double>());
    }
  }
  if (c.sample && !r.interrupted) {
    std::printf("sample (prompt \"NAME\\n       \", temperature 0.8):\n");
    SamplingOptions s;
    stream_generation(dir, "NAME\n       ", 120, s, 7);
  }
  return 0;
}

int run_generate(const GenerateCommand& c) {
  stream_generation(c.model, c.prompt, c.max_tokens, c.sampling, c.seed);
  return 0;
}

}  // namespace moe::cli
