#include "moe/losses.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tensor/error.h"

namespace moe {

float balance_loss(std::span<const float> probs, std::span<const int32_t> selected, int64_t tokens,
                   int64_t experts, int64_t k, int64_t seq_len, float alpha,
                   std::span<float> dprobs) {
  if (seq_len <= 0 || tokens % seq_len != 0)
    throw Error("balance_loss: " + std::to_string(tokens) +
                " tokens do not split into sequences of " + std::to_string(seq_len));
  const int64_t n_seq = tokens / seq_len;
  // Per-thread scratch keeps this pure function allocation-free once warm.
  thread_local std::vector<double> f, p;
  f.resize(experts);
  p.resize(experts);
  double loss = 0.0;
  for (int64_t b = 0; b < n_seq; ++b) {
    std::fill(f.begin(), f.end(), 0.0);
    std::fill(p.begin(), p.end(), 0.0);
    for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t) {
      for (int64_t j = 0; j < k; ++j) f[selected[t * k + j]] += 1.0;
      for (int64_t i = 0; i < experts; ++i) p[i] += probs[t * experts + i];
    }
    double sum = 0.0;
    for (int64_t i = 0; i < experts; ++i) {
      f[i] /= static_cast<double>(seq_len * k);
      sum += f[i] * (p[i] / seq_len);
    }
    loss += sum;
    if (!dprobs.empty()) {
      // dL/dp_ti = alpha * E * f_bi / (S * n_seq): P_bi is a mean over the S tokens.
      const double scale = alpha * experts / (static_cast<double>(seq_len) * n_seq);
      for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t)
        for (int64_t i = 0; i < experts; ++i)
          dprobs[t * experts + i] += static_cast<float>(scale * f[i]);
    }
  }
  return static_cast<float>(alpha * experts * loss / n_seq);
}

float z_loss(std::span<const float> logits, int64_t tokens, int64_t experts, float beta,
             std::span<float> dlogits) {
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (tokens > 256)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = logits.data() + t * experts;
    const float m = *std::max_element(l, l + experts);
    double s = 0.0;
    for (int64_t i = 0; i < experts; ++i) s += std::exp(static_cast<double>(l[i] - m));
    const double lse = m + std::log(s);
    total += lse * lse;
    if (!dlogits.empty()) {
      // d(lse^2)/dl_i = 2 * lse * softmax(l)_i
      const double scale = 2.0 * beta * lse / tokens;
      for (int64_t i = 0; i < experts; ++i)
        dlogits[t * experts + i] += static_cast<float>(scale * std::exp(l[i] - m) / s);
    }
  }
  return static_cast<float>(beta * total / tokens);
}

void update_expert_bias(std::span<float> bias, std::span<const int64_t> load, float gamma) {
  require(bias.size() == load.size(), "update_expert_bias: bias and load sizes differ");
  double mean = 0.0;
  for (int64_t c : load) mean += static_cast<double>(c);
  mean /= static_cast<double>(load.size());
  for (size_t i = 0; i < bias.size(); ++i) {
    const double err = mean - static_cast<double>(load[i]);
    bias[i] += gamma * static_cast<float>((err > 0) - (err < 0));
  }
}

}  // namespace moe
