#include "nn/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

namespace moe {

AdamW::AdamW(ParamStore& store, const AdamWOptions& options) : store_(store), options_(options) {
  for (const auto& e : store.entries())
    (e.name.find("norm") != std::string::npos ? plain_ : decayed_).push_back(e.ref);
  m_.resize({store.values().numel()});
  v_.resize({store.values().numel()});
  m_.fill(0.0f);
  v_.fill(0.0f);
}

void AdamW::step(float lr) {
  ++steps_;
  const float b1 = options_.beta1, b2 = options_.beta2, eps = options_.eps;
  const float c1 = 1.0f / (1.0f - std::pow(b1, static_cast<float>(steps_)));
  const float c2 = 1.0f / (1.0f - std::pow(b2, static_cast<float>(steps_)));
  auto update = [&](ParamRef r, float decay) {
    float* p = store_.value(r).data();
    const float* g = store_.grad(r).data();
    float* m = m_.data() + r.offset;
    float* v = v_.data() + r.offset;
#pragma omp parallel for simd schedule(static) if (r.numel > 65536)
    for (int64_t i = 0; i < r.numel; ++i) {
      m[i] = b1 * m[i] + (1.0f - b1) * g[i];
      v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
      const float mhat = m[i] * c1, vhat = v[i] * c2;
      p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + decay * p[i]);
    }
  };
  for (ParamRef r : decayed_) update(r, options_.weight_decay);
  for (ParamRef r : plain_) update(r, 0.0f);
}

float learning_rate(int64_t step, int64_t total, int64_t warmup, float max_lr, float min_lr) {
  if (step < warmup) return max_lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const int64_t span = std::max<int64_t>(1, total - 1 - warmup);
  const double progress = std::min(1.0, double(step - warmup) / double(span));
  return min_lr +
         0.5f * (max_lr - min_lr) * static_cast<float>(1.0 + std::cos(std::numbers::pi * progress));
}

double clip_grad_norm(ParamStore& store, double max_norm) {
  float* g = store.grads().data();
  const int64_t n = store.grads().numel();
  // Fixed chunks summed in order: the same bits for any thread count.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double sum = 0.0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) sum += double(g[i]) * g[i];
    partial[c] = sum;
  }
  double sum = 0.0;
  for (double p : partial) sum += p;
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] *= scale;
  }
  return norm;
}

}  // namespace moe
