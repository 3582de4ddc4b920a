#pragma once
// Expert selection as pure functions of one token's router logits: the training Router calls
// them for every token of a batch, and the inference engine for each token it runs, so the two
// cannot route differently. All math in fp32 (docs/FORMULAS.md, "Routers").
#include <cstdint>
#include <vector>

#include "moe/config.h"

namespace moe {

// Indices of the `count` largest of values[0..n), highest first; ties go to the lower index
// (as torch.topk does on CPU). order: [n] scratch; out: [count].
void top_indices(const float* values, int64_t n, int64_t count, int32_t* order, int32_t* out);

// Whether a token's k picked gates are renormalised to sum to 1: always for top-k-then-softmax
// and noisy top-k, else as norm_topk_prob says.
bool renormalises(const MoeConfig& c);

// Added to the sums that normalise sigmoid scores (DeepSeek-V3 does the same): when every
// score underflows to 0 the gates and P become 0 instead of 0/0 = NaN. Softmax sums are at
// least 1/E, to which 1e-20 adds nothing in fp32.
inline constexpr float kScoreNormEps = 1e-20f;

// logits: [E] -> scores: [E], softmax over the experts, or each logit's sigmoid (SigmoidBias).
void router_scores(const MoeConfig& c, const float* logits, float* scores);

// Token choice: the token's k experts by selection score (the score, plus the balancing bias
// for SigmoidBias), limited to the topk_group best groups when n_group > 1, highest first:
// picks [k]; their gates [k]: routed_scaling_factor * score, divided by the picked scores' sum
// when renormalises(c). Returns that sum (+ kScoreNormEps), which the backward needs.
// scores, bias (nullptr: zeros): [E]; selection: [E] and order: [E] scratch.
float select_token_experts(const MoeConfig& c, const float* scores, const float* bias,
                           int32_t* picks, float* gates, float* selection, int32_t* order);

// Expert choice in evaluation: every expert whose score reaches its learned threshold takes
// the token, in ascending expert order, gate routed_scaling_factor * score. A token's route
// so depends on that token alone. scores, thresholds: [E]; experts and gates are replaced.
void experts_over_threshold(const MoeConfig& c, const float* scores, const float* thresholds,
                            std::vector<int32_t>& experts, std::vector<float>& gates);

}  // namespace moe
