#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "tensor/error.h"

namespace moe {

int32_t sample_token(std::span<const float> logits, const SamplingOptions& o, Rng& rng,
                     std::vector<std::pair<float, int32_t>>& scratch) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (o.temperature <= 0.0f)
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  scratch.resize(V);
  for (int64_t i = 0; i < V; ++i) scratch[i] = {logits[i], static_cast<int32_t>(i)};
  const int64_t k = o.top_k > 0 ? std::min(o.top_k, V) : V;
  std::partial_sort(scratch.begin(), scratch.begin() + k, scratch.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  // Softmax over the k best at the given temperature, then keep the smallest prefix whose
  // mass reaches top_p.
  const float top = scratch[0].first;
  double total = 0;
  for (int64_t i = 0; i < k; ++i) {
    scratch[i].first = std::exp((scratch[i].first - top) / o.temperature);
    total += scratch[i].first;
  }
  int64_t keep = k;
  double mass = 0;
  for (int64_t i = 0; i < k; ++i) {
    mass += scratch[i].first / total;
    if (mass >= o.top_p) {
      keep = i + 1;
      break;
    }
  }
  double kept_total = 0;
  for (int64_t i = 0; i < keep; ++i) kept_total += scratch[i].first;
  double u = double(rng.uniform()) * kept_total;
  for (int64_t i = 0; i < keep; ++i) {
    u -= scratch[i].first;
    if (u <= 0) return scratch[i].second;
  }
  return scratch[keep - 1].second;
}

Generation generate(const GenerationModel& model, std::span<const int32_t> prompt,
                    int64_t max_tokens, const SamplingOptions& options, uint64_t seed,
                    int32_t stop_token, const std::function<bool(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  require(!prompt.empty(), "generate: the prompt must hold at least one token");
  const int64_t context = model.context;
  if (static_cast<int64_t>(prompt.size()) > context)
    throw Error("generate: the prompt has " + std::to_string(prompt.size()) +
                " tokens, more than the context of " + std::to_string(context));
  Generation g;
  g.prompt_tokens = static_cast<int64_t>(prompt.size());
  g.context = context;
  std::vector<float> logits(static_cast<size_t>(model.vocab_size));
  const auto prefill_start = clock::now();
  model.feed(prompt, logits);
  int64_t fed = static_cast<int64_t>(prompt.size());
  g.prefill_seconds = seconds_since(prefill_start);
  Rng rng(seed);
  std::vector<std::pair<float, int32_t>> scratch;
  const auto decode_start = clock::now();
  double callback_seconds = 0;  // the caller's printing is not decoding
  while (static_cast<int64_t>(g.tokens.size()) < max_tokens) {
    const int32_t next = sample_token(logits, options, rng, scratch);
    if (next == stop_token) {
      g.stop = StopReason::StopToken;
      break;
    }
    g.tokens.push_back(next);
    if (on_token) {
      const auto t0 = clock::now();
      const bool go_on = on_token(next);
      callback_seconds += seconds_since(t0);
      if (!go_on) {
        g.stop = StopReason::Caller;
        break;
      }
    }
    if (static_cast<int64_t>(g.tokens.size()) == max_tokens) break;  // no logits needed
    if (fed >= context) {
      g.stop = StopReason::ContextFull;
      break;
    }
    model.feed({&next, 1}, logits);
    ++fed;
  }
  g.decode_seconds = seconds_since(decode_start) - callback_seconds;
  return g;
}

Generation generate(InferenceModel& model, std::span<const int32_t> prompt, int64_t max_tokens,
                    const SamplingOptions& options, uint64_t seed, int32_t stop_token,
                    const std::function<bool(int32_t)>& on_token) {
  const int64_t context = model.config().max_position_embeddings;
  const int64_t positions = std::min(static_cast<int64_t>(prompt.size()) + max_tokens, context);
  KvCache cache = model.make_cache(std::max<int64_t>(positions, 1));
  const GenerationModel step{context, model.config().vocab_size,
                             [&](std::span<const int32_t> tokens, std::span<float> logits) {
                               model.forward(tokens, cache, logits);  // a prompt in one batch
                             }};
  return generate(step, prompt, max_tokens, options, seed, stop_token, on_token);
}

}  // namespace moe
