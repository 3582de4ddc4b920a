#include "moe/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace moe {

void top_indices(const float* values, int64_t n, int64_t count, int32_t* order, int32_t* out) {
  std::iota(order, order + n, 0);
  std::partial_sort(order, order + count, order + n, [values](int32_t a, int32_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  std::copy(order, order + count, out);
}

bool renormalises(const MoeConfig& c) {
  return c.norm_topk_prob || c.router_type == RouterType::TopKSoftmax ||
         c.router_type == RouterType::NoisyTopK;
}

void router_scores(const MoeConfig& c, const float* logits, float* scores) {
  const int64_t E = c.num_experts;
  if (c.router_type == RouterType::SigmoidBias) {
    for (int64_t i = 0; i < E; ++i) scores[i] = 1.0f / (1.0f + std::exp(-logits[i]));
    return;
  }
  const float m = *std::max_element(logits, logits + E);
  float sum = 0.0f;
  for (int64_t i = 0; i < E; ++i) sum += (scores[i] = std::exp(logits[i] - m));
  for (int64_t i = 0; i < E; ++i) scores[i] /= sum;
}

namespace {

// Group-limited routing: every expert outside the topk_group best groups gets selection score
// -inf. A group's score is the sum of its two best selection scores (DeepSeek-V3) or its best
// one (DeepSeek-V2). selection: [E] changed in place; order: [E] scratch.
void keep_best_groups(const MoeConfig& c, float* selection, int32_t* order) {
  const int64_t E = c.num_experts, G = c.n_group, per_group = E / G;
  const bool top2 = c.group_score == GroupScore::Top2Sum;
  float group_score[256];  // n_group <= 256 (MoeConfig::validate)
  for (int64_t g = 0; g < G; ++g) {
    const float* v = selection + g * per_group;
    float best = -std::numeric_limits<float>::infinity(), second = best;
    for (int64_t i = 0; i < per_group; ++i) {
      if (v[i] > best) {
        second = best;
        best = v[i];
      } else if (v[i] > second) {
        second = v[i];
      }
    }
    group_score[g] = top2 && per_group > 1 ? best + second : best;
  }
  int32_t kept_groups[256];
  top_indices(group_score, G, c.topk_group, order, kept_groups);
  bool keep[256] = {};
  for (int64_t g = 0; g < c.topk_group; ++g) keep[kept_groups[g]] = true;
  for (int64_t i = 0; i < E; ++i)
    if (!keep[i / per_group]) selection[i] = -std::numeric_limits<float>::infinity();
}

}  // namespace

float select_token_experts(const MoeConfig& c, const float* scores, const float* bias,
                           int32_t* picks, float* gates, float* selection, int32_t* order) {
  const int64_t E = c.num_experts, k = c.top_k;
  for (int64_t i = 0; i < E; ++i) selection[i] = bias ? scores[i] + bias[i] : scores[i];
  if (c.n_group > 1) keep_best_groups(c, selection, order);
  top_indices(selection, E, k, order, picks);
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) sum += scores[picks[j]];
  sum += kScoreNormEps;
  const bool renorm = renormalises(c);
  for (int64_t j = 0; j < k; ++j)
    gates[j] = c.routed_scaling_factor * (renorm ? scores[picks[j]] / sum : scores[picks[j]]);
  return sum;
}

void experts_over_threshold(const MoeConfig& c, const float* scores, const float* thresholds,
                            std::vector<int32_t>& experts, std::vector<float>& gates) {
  experts.clear();
  gates.clear();
  for (int64_t e = 0; e < c.num_experts; ++e) {
    if (scores[e] < thresholds[e]) continue;
    experts.push_back(static_cast<int32_t>(e));
    gates.push_back(c.routed_scaling_factor * scores[e]);
  }
}

}  // namespace moe
