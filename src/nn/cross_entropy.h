#pragma once
// Softmax cross-entropy over the vocabulary, fused with its gradient.
#include <cstdint>
#include <span>

namespace moe {

// logits: [n, V]  targets: [n], each in [0, V) or -1 (ignored).
// Returns the mean over non-ignored rows of logsumexp(l) - l[target] (0 when none).
// When dlogits is non-empty ([n, V], may alias logits) it receives
// grad_scale * (softmax(l) - onehot(target)) / count, and 0 on ignored rows.
double cross_entropy(int64_t n, int64_t V, std::span<const float> logits,
                     std::span<const int32_t> targets, std::span<float> dlogits,
                     float grad_scale = 1.0f);

}  // namespace moe
