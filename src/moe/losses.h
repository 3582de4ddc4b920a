#pragma once
// The router's balancing losses, capacity and bias update as small pure functions
// (formulas: docs/FORMULAS.md, "Balancing losses"). Each returns the loss value and,
// where a gradient span is given, ADDS dLoss/dinput into it.
#include <cstdint>
#include <span>

namespace moe {

// Switch/GShard balancing loss, per sequence and averaged over sequences:
//   L = alpha * E * mean_b sum_i f_bi * P_bi,  f_bi = count_bi / (S * k),  P_bi = mean_t p_ti
// seq_len = T gives the batch-level Switch loss, seq_len = S the DeepSeek sequence-level one.
// probs: [T, E] normalised scores  selected: [T, k] expert ids (before any dropping)
// dprobs: [T, E] or empty
float balance_loss(std::span<const float> probs, std::span<const int32_t> selected, int64_t tokens,
                   int64_t experts, int64_t k, int64_t seq_len, float alpha,
                   std::span<float> dprobs);

// ST-MoE router z-loss: L = beta * mean_t (logsumexp_i l_ti)^2.
// logits: [T, E]  dlogits: [T, E] or empty
float z_loss(std::span<const float> logits, int64_t tokens, int64_t experts, float beta,
             std::span<float> dlogits);

// Aux-loss-free balancing (DeepSeek-V3): b_i += gamma * sign(mean_load - load_i).
// bias: [E]  load: [E] assignments per expert over the (global) batch
void update_expert_bias(std::span<float> bias, std::span<const int64_t> load, float gamma);

}  // namespace moe
