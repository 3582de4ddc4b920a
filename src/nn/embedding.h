#pragma once
// Token embedding: a row lookup, and its scatter-add backward.
#include <cstdint>
#include <span>

namespace moe {

// tokens: [n] ids in [0, V)  table: [V, D] -> y: [n, D] (overwritten). Throws Error naming
// the first id out of range.
void embedding_forward(int64_t V, int64_t D, std::span<const int32_t> tokens,
                       std::span<const float> table, std::span<float> y);

// dy: [n, D] -> dtable: [V, D] added to (rows of repeated ids sum, in token order).
void embedding_backward(int64_t D, std::span<const int32_t> tokens, std::span<const float> dy,
                        std::span<float> dtable);

}  // namespace moe
