#pragma once
// Autoregressive generation with the KV cache: the prompt is fed token by token, then each
// next token is sampled (temperature, top-k, top-p) and fed back.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/transformer.h"
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

// Feeds `prompt` (at least one token), then samples up to max_tokens tokens, calling on_token
// for each as soon as it is drawn; stops early at `stop_token` (when >= 0) or a full context.
// Returns the sampled tokens.
std::vector<int32_t> generate(Transformer& model, std::span<const int32_t> prompt,
                              int64_t max_tokens, const SamplingOptions& options, uint64_t seed,
                              int32_t stop_token,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace moe
