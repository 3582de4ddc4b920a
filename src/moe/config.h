#pragma once
// MoeConfig: every routing, capacity and loss option of the MoE layer as a plain field
// (formulas: docs/FORMULAS.md; option names after Megatron-Core and Hugging Face).
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

namespace moe {

enum class RouterType {
  SoftmaxTopK,   // p = softmax(l), pick top-k of p; gates p (renormalised if norm_topk_prob)
  TopKSoftmax,   // Mixtral: pick top-k logits, softmax over those k (always renormalised)
  NoisyTopK,     // Shazeer 2017: H = l + n * softplus(x W_noise), then TopKSoftmax on H
  SigmoidBias,   // DeepSeek-V3: s = sigmoid(l), select on s + b, gates from s
  ExpertChoice,  // Zhou 2022: each expert takes its top-C tokens of softmax(l)
};
enum class DropPolicy { Probs, Position };
enum class AuxLossType { None, Switch, Sequence };
// How group-limited routing scores a group of experts before keeping topk_group of them.
enum class GroupScore {
  Top2Sum,  // DeepSeek-V3: the sum of the group's two best selection scores
  Max,      // DeepSeek-V2: the group's best score
};
// What the router scores: each token's own input, or the mean of its sequence's inputs over
// positions 0..min(t, P-1) (causal; from position P-1 on the route is fixed for the sequence).
enum class RoutingLevel { Token, Sequence };

// Ranges that validate() enforces: hidden_size, moe_intermediate_size and
// shared_expert_intermediate_size up to 2^20; num_experts [1, 2^16]; top_k [1, E];
// n_group [1, 256] dividing E; topk_group [1, n_group]; n_shared_experts [0, 256];
// min_capacity [0, 2^30]; capacity_groups [1, 2^16]; (eval_)capacity_factor [0, 1000];
// routed_scaling_factor (0, 1000]; jitter_eps [0, 1); bias_update_speed [0, 1]; aux_loss_coeff and
// z_loss_coeff [0, 100]; route_prefix [1, 2^24] (and at most max_position_embeddings in a model);
// and at most 2^40 weights in one MoE layer. Non-finite numbers are out of every range.
struct MoeConfig {
  int64_t hidden_size = 512;             // D
  int64_t moe_intermediate_size = 1408;  // F, per routed expert
  int64_t num_experts = 8;               // E
  int64_t top_k = 2;                     // k

  RouterType router_type = RouterType::TopKSoftmax;
  RoutingLevel routing_level = RoutingLevel::Token;
  int64_t route_prefix = 1;  // P: positions whose mean routes a sequence (sequence level)
  bool norm_topk_prob =
      true;  // renormalise the k picked gates (always so for TopKSoftmax, NoisyTopK)
  float routed_scaling_factor = 1.0f;  // multiplies every routed gate (2.5 in DeepSeek-V3)
  float jitter_eps = 0.0f;             // Switch multiplicative jitter on the router input; 0 = off
  int64_t n_group = 1;                 // group-limited routing: groups of experts
  int64_t topk_group = 1;              // groups kept per token
  GroupScore group_score = GroupScore::Top2Sum;
  float bias_update_speed = 0.001f;  // gamma, aux-loss-free bias update (SigmoidBias)

  // Double, not float: 1.1f is 1.10000002, enough to push ceil(cf T k / E) up by one.
  double capacity_factor = 0.0;  // 0 = dropless
  // When absent, token choice evaluates dropless (a capacity in evaluation makes a token's
  // route depend on later tokens and other sequences) and expert choice by its thresholds.
  std::optional<double> eval_capacity_factor;
  int64_t min_capacity = 0;
  DropPolicy drop_policy = DropPolicy::Probs;
  // G: a training batch's tokens split into G equal groups, each with its own capacity and
  // its own batch-level (Switch) balancing loss, as GShard's groups; expert choice selects
  // each expert's tokens within each group. An expert-parallel run does all of it per rank on
  // its own tokens; one process with G = P reproduces that layout.
  int64_t capacity_groups = 1;

  AuxLossType aux_loss_type = AuxLossType::Switch;
  float aux_loss_coeff = 0.01f;  // alpha
  float z_loss_coeff = 0.001f;   // beta

  int64_t n_shared_experts = 0;                 // S, always-on experts
  int64_t shared_expert_intermediate_size = 0;  // F_s, per shared expert
  bool shared_expert_gate = false;              // Qwen2-MoE: sigmoid(x w_g) scales shared output

  // Throws moe::Error naming the first field out of its range (stated in the message) or
  // inconsistent with another.
  void validate() const;
  // Capacity in assignments per expert for T tokens, max(min_capacity, ceil(cf T k / E)) with
  // the formula part capped at T (an expert never receives more); -1 when dropless.
  int64_t capacity(int64_t tokens, bool training) const;
  bool uses_noise() const { return router_type == RouterType::NoisyTopK; }
};

// Parses a JSON object; unknown keys and wrong types are errors naming the key.
MoeConfig moe_config_from_json(const nlohmann::json& j);
nlohmann::json moe_config_to_json(const MoeConfig& c);

const char* to_string(RouterType t);
const char* to_string(DropPolicy p);
const char* to_string(AuxLossType t);
const char* to_string(GroupScore s);
const char* to_string(RoutingLevel l);

}  // namespace moe
