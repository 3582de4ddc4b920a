#pragma once
// Autoregressive generation with the KV cache: the prompt is fed token by token, then each
// next token is sampled (temperature, top-k, top-p) and fed back.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "infer/inference_model.h"
#include "tensor/rng.h"

namespace moe {

struct SamplingOptions {
  float temperature = 0.8f;  // 0 = greedy
  int64_t top_k = 40;        // 0 = no limit
  float top_p = 0.95f;       // nucleus; 1 = no limit
};

// Draws a token from logits: [V]. `scratch` is reused between calls.
int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, Rng& rng,
                     std::vector<std::pair<float, int32_t>>& scratch);

enum class StopReason {
  MaxTokens,    // max_tokens were drawn
  StopToken,    // the model drew stop_token
  ContextFull,  // the KV cache holds max_position_embeddings tokens
  Caller,       // on_token returned false
};

struct Generation {
  std::vector<int32_t> tokens;  // the sampled tokens (stop_token excluded)
  StopReason stop = StopReason::MaxTokens;
  int64_t prompt_tokens = 0;
  int64_t context = 0;         // the model's max_position_embeddings
  double prefill_seconds = 0;  // feeding the prompt
  double decode_seconds = 0;   // drawing the tokens after it (the caller's on_token excluded)
};

// What generation needs of a model: its context length and vocabulary, and a step that feeds
// tokens after those fed so far and writes the next-token logits of the last one: [V].
struct GenerationModel {
  int64_t context = 0;
  int64_t vocab_size = 0;
  std::function<void(std::span<const int32_t> tokens, std::span<float> logits)> feed;
};

// Feeds `prompt` (at least one token), then samples up to max_tokens tokens, calling on_token
// for each as soon as it is drawn (returning false stops there); stops early at `stop_token`
// (when >= 0) or a full context.
Generation generate(const GenerationModel& model, std::span<const int32_t> prompt,
                    int64_t max_tokens, const SamplingOptions& options, uint64_t seed,
                    int32_t stop_token, const std::function<bool(int32_t)>& on_token = {});
// The same over the inference engine: its KV cache, the prompt as one batch.
Generation generate(InferenceModel& model, std::span<const int32_t> prompt, int64_t max_tokens,
                    const SamplingOptions& options, uint64_t seed, int32_t stop_token,
                    const std::function<bool(int32_t)>& on_token = {});

}  // namespace moe
