#include "analysis/perplexity.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace moe {
namespace {

// -log softmax(logits)[target], with llama-perplexity's arithmetic: the maximum and the
// shifted exponentials in float, their sum and the logarithm in double.
double negative_log_likelihood(std::span<const float> logits, int32_t target) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum_exp = 0;
  for (const float v : logits) sum_exp += std::exp(v - max_logit);
  return -(double(logits[size_t(target)] - max_logit) - std::log(sum_exp));
}

}  // namespace

PerplexityResult chunked_perplexity(InferenceModel& model, std::span<const int32_t> tokens,
                                    int64_t n_ctx, std::optional<int32_t> bos, int64_t max_chunks) {
  const ModelConfig& config = model.config();
  const int64_t V = config.vocab_size, N = static_cast<int64_t>(tokens.size());
  require(n_ctx >= 2 && n_ctx <= config.max_position_embeddings,
          "--ctx must lie in [2, " + std::to_string(config.max_position_embeddings) +
              "] (the model's positions), got " + std::to_string(n_ctx));
  require(N >= 2 * n_ctx, "the text has " + std::to_string(N) + " tokens: a perplexity over " +
                              std::to_string(n_ctx) + "-token chunks needs at least " +
                              std::to_string(2 * n_ctx) + " (two chunks)");
  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.text_tokens = N;
  r.chunks = N / n_ctx;
  if (max_chunks >= 0) r.chunks = std::min(r.chunks, max_chunks);
  const int64_t first = n_ctx / 2;
  std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));
  std::vector<float> logits(static_cast<size_t>(n_ctx * V));
  double sum = 0, sum_squares = 0;
  for (int64_t c = 0; c < r.chunks; ++c) {
    std::copy_n(tokens.begin() + c * n_ctx, n_ctx, chunk.begin());
    if (bos) chunk.front() = *bos;
    KvCache cache = model.make_cache(n_ctx);
    model.forward_all(chunk, cache, logits);
    for (int64_t i = first; i < n_ctx - 1; ++i) {
      const double nll = negative_log_likelihood(
          std::span<const float>(logits).subspan(size_t(i * V), size_t(V)), chunk[size_t(i + 1)]);
      sum += nll;
      sum_squares += nll * nll;
    }
    r.scored_tokens += n_ctx - 1 - first;
  }
  const double n = static_cast<double>(r.scored_tokens);
  r.mean_nll = sum / n;
  const double variance = sum_squares / n - r.mean_nll * r.mean_nll;
  r.nll_stderr = n > 1 && variance > 0 ? std::sqrt(variance / (n - 1)) : 0;
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

}  // namespace moe
