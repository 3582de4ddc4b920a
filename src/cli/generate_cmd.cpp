#include "cli/generate_cmd.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <random>
#include <string_view>

#include "infer/open_model.h"
#include "model/hf_checkpoint.h"
#include "run/checkpoint.h"
#include "text/folder_tokenizer.h"

namespace moe::cli {

CLI::App* add_generate_command(CLI::App& app, GenerateCommand& c) {
  CLI::App* generate = app.add_subcommand("generate", "Generate text from a trained run");
  generate
      ->add_option("-m,--model", c.model,
                   "Run folder, Hugging Face checkpoint folder (mixtral, qwen2_moe, olmoe) or "
                   "GGUF file (llama, qwen2moe, olmoe)")
      ->required()
      ->check(CLI::ExistingPath);
  add_prompt_options(*generate, c.prompt);
  generate->add_option("-n,--max-tokens", c.max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  generate->add_option("--stop", c.stop,
                       "Stop when the generated text contains TEXT (printed up to just before it)");
  generate->add_option("--temperature", c.sampling.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  generate->add_option("--top-k", c.sampling.top_k, "0 = all")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-p", c.sampling.top_p, "Nucleus mass")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  generate
      ->add_option("--seed", c.seed,
                   "Sampling seed in [0, 2^64-1]; -1 = a random one (printed with -v)")
      ->capture_default_str();
  generate
      ->add_option("--expert-cache", c.decoder.expert_cache,
                   "Experts per MoE layer kept in RAM, the rest read from the model's files when "
                   "routed to (0 = all mapped)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 16));
  generate->add_option("--cache-policy", c.cache_policy, "Expert cache eviction: lru or lfu")
      ->capture_default_str()
      ->check(CLI::IsMember({"lru", "lfu"}));
  generate->add_flag("--prefetch", c.decoder.prefetch,
                     "With --expert-cache: read the next layer's likely experts while this layer "
                     "computes");
  generate->add_flag("-v,--verbose", c.verbose,
                     "Print on stderr, per MoE layer, the experts generation used and the route "
                     "of the last token");
  return generate;
}

namespace {

// Length of the longest proper prefix of `stop` that `text` ends with: text that may yet
// become `stop` once more tokens arrive.
size_t partial_stop_suffix(std::string_view text, std::string_view stop) {
  for (size_t n = std::min(text.size(), stop.size() - 1); n > 0; --n)
    if (text.ends_with(stop.substr(0, n))) return n;
  return 0;
}

// --seed: -1 draws a random seed, as llama.cpp does; anything else must fit 64 bits.
uint64_t resolve_seed(const std::string& text) {
  if (text == "-1") return (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  uint64_t seed = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), seed);
  if (error != std::errc() || end != text.data() + text.size())
    throw Error("--seed must be -1 (random) or an integer in [0, 18446744073709551615], got '" +
                text + "'");
  return seed;
}

// The MoE layers of `config` in `routing`, each with no expert touched yet.
void start_routing(const ModelConfig& config, GenerationRouting& routing) {
  for (int64_t l = 0; l < config.num_hidden_layers; ++l)
    if (config.moe && config.is_moe_layer(l)) routing.layers.push_back(l);
  routing.touched.assign(routing.layers.size(), {});
  routing.last.assign(routing.layers.size(), {});
}

// After each decode step (a token was drawn from its logits): that step's routes.
void record_routes(const InferenceModel& model, GenerationRouting& routing) {
  for (size_t i = 0; i < routing.layers.size(); ++i) {
    routing.last[i].clear();
    const auto note = [&](int32_t expert, float gate) {
      routing.touched[i].insert(expert);
      routing.last[i].emplace_back(expert, gate);
    };
    // The last position the forward ran (the prompt's last, then each drawn token).
    const RoutingPlan& plan = model.last_routes(static_cast<int64_t>(i));
    for (int64_t a = 0; a < plan.assignments(); ++a)
      if (plan.token[a] == plan.tokens - 1) note(plan.expert[a], plan.gate[a]);
  }
}

}  // namespace

// The whole text is decoded after every token and the new part printed; a trailing U+FFFD (an
// incomplete byte sequence the next byte-fallback piece may complete) and a trailing start of
// the stop text are held back until they resolve.
Generation stream_generation(const std::string& run, const std::string& prompt, int64_t max_tokens,
                             const SamplingOptions& sampling, uint64_t seed,
                             const std::string& stop, GenerationRouting* routing,
                             const InferenceOptions& decoder_options) {
  // Any model runs mapped as it lies through the one inference engine (bf16 stays bf16, experts
  // may stay on storage). A run folder's save that a kill interrupted is finished or undone
  // first, as --resume does.
  prepare_for_reading(run);
  const OpenedModel opened = open_model(run, decoder_options);
  const ModelConfig& config = opened.config;
  const FolderTokenizer tokenizer = model_tokenizer(opened, run);
  require_tokenizer_fits(tokenizer, config, run);
  std::vector<int32_t> ids =
      encode_prompt(run, opened.kind == ModelKind::HuggingFace, tokenizer, prompt);
  // Refused before the prompt is echoed: on failure nothing goes to stdout.
  if (static_cast<int64_t>(ids.size()) > config.max_position_embeddings)
    throw Error("the prompt has " + std::to_string(ids.size()) +
                " tokens, more than the model's context of " +
                std::to_string(config.max_position_embeddings));
  const int64_t positions =
      std::min(static_cast<int64_t>(ids.size()) + max_tokens, config.max_position_embeddings);
  require_inference_memory(config, positions, static_cast<int64_t>(ids.size()),
                           decoder_options.expert_cache, cached_expert_bytes(*opened.model),
                           "generating " + std::to_string(positions) + " positions");
  // The stop text is looked for in what follows the prompt only.
  const size_t prompt_chars = tokenizer.decode(ids).size();
  std::string printed;
  // Prints what is new; returns false once the stop text has appeared.
  auto emit = [&](bool final) {
    std::string text = tokenizer.decode(ids);
    bool stopped = false;
    if (!stop.empty() && text.size() > prompt_chars) {
      if (const size_t at = text.find(stop, prompt_chars); at != std::string::npos) {
        text.resize(at);
        stopped = true;
      } else if (!final) {
        const std::string_view generated = std::string_view(text).substr(prompt_chars);
        text.resize(text.size() - partial_stop_suffix(generated, stop));
      }
    }
    constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    while (!final && !stopped && text.ends_with(kReplacement))
      text.resize(text.size() - kReplacement.size());
    const size_t common =
        std::mismatch(text.begin(), text.end(), printed.begin(), printed.end()).first -
        text.begin();
    if (text.size() > common) std::fwrite(text.data() + common, 1, text.size() - common, stdout);
    std::fflush(stdout);
    printed = std::move(text);
    return !stopped;
  };
  if (routing) start_routing(config, *routing);
  emit(false);
  const auto on_token = [&](int32_t t) {
    if (routing) record_routes(*opened.model, *routing);
    ids.push_back(t);
    return emit(false);
  };
  const Generation g =
      generate(*opened.model, ids, max_tokens, sampling, seed, tokenizer.eos_id(), on_token);
  emit(true);
  std::fputc('\n', stdout);
  std::fflush(stdout);  // before the speed line on stderr
  return g;
}

int run_generate(const GenerateCommand& c) {
  const std::string prompt = read_prompt(c.prompt);
  const uint64_t seed = resolve_seed(c.seed);
  if (c.verbose) std::fprintf(stderr, "seed: %llu\n", static_cast<unsigned long long>(seed));
  GenerationRouting routing;
  InferenceOptions decoder = c.decoder;
  decoder.cache_policy = c.cache_policy == "lfu" ? CachePolicy::Lfu : CachePolicy::Lru;
  const Generation g = stream_generation(c.model, prompt, c.max_tokens, c.sampling, seed, c.stop,
                                         c.verbose ? &routing : nullptr, decoder);
  if (g.stop == StopReason::ContextFull)
    std::fprintf(stderr, "moe: stopped at the model's context length (%lld tokens)\n",
                 static_cast<long long>(g.context));
  auto rate = [](double tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; };
  std::fprintf(
      stderr, "prefill: %lld tokens, %.1f tokens/s; decode: %lld tokens, %.1f tokens/s\n",
      static_cast<long long>(g.prompt_tokens), rate(double(g.prompt_tokens), g.prefill_seconds),
      static_cast<long long>(g.tokens.size()), rate(double(g.tokens.size()), g.decode_seconds));
  for (size_t i = 0; i < routing.layers.size(); ++i) {
    std::string touched, last;
    for (int32_t e : routing.touched[i]) {
      if (!touched.empty()) touched += ',';
      touched += std::to_string(e);
    }
    for (const auto& [e, gate] : routing.last[i]) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%s%d (%.3f)", last.empty() ? "" : ", ", e, gate);
      last += buf;
    }
    std::fprintf(stderr, "layer %lld: %zu distinct experts used {%s}; last token: %s\n",
                 static_cast<long long>(routing.layers[i]), routing.touched[i].size(),
                 touched.c_str(), last.c_str());
  }
  return 0;
}

}  // namespace moe::cli
