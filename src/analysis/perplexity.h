#pragma once
// Perplexity of a text under any model the inference engine runs (a run folder, a Hugging Face
// folder, a GGUF file), measured as llama.cpp's llama-perplexity measures it, so that the two
// programs' figures on the same file and text can be compared:
// - the text's tokens are cut into chunks of n_ctx tokens (a tail shorter than n_ctx is left
//   out); each chunk is a fresh sequence whose first token is replaced by BOS when the model
//   adds one;
// - in each chunk only the second half is scored: positions i in [n_ctx/2, n_ctx - 1) predict
//   token i + 1, each scored by -log softmax(logits_i)[token_{i+1}];
// - perplexity = exp(mean of those negative log-likelihoods over every chunk).
#include <cstdint>
#include <optional>
#include <span>

#include "infer/inference_model.h"

namespace moe {

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;    // nats per scored token
  double nll_stderr = 0;  // the standard error of mean_nll
  int64_t n_ctx = 0, chunks = 0, scored_tokens = 0, text_tokens = 0;
};

// `tokens` as the tokenizer gives the whole text (BOS first where the model adds one). Throws
// Error when the text has fewer than 2 n_ctx tokens (llama-perplexity's minimum) or n_ctx is
// below 2 or beyond the model's positions. max_chunks < 0: all.
PerplexityResult chunked_perplexity(InferenceModel& model, std::span<const int32_t> tokens,
                                    int64_t n_ctx, std::optional<int32_t> bos,
                                    int64_t max_chunks = -1);

}  // namespace moe
