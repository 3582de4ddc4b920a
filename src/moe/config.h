#pragma once
// MoeConfig: every routing, capacity and loss option of the MoE layer as a plain field
// (formulas: shared/REFERENCE.md; option names after Megatron-Core and Hugging Face).
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
// What the router scores: each token's own input, or the mean of its sequence's inputs over
// positions 0..min(t, P-1) (causal; from position P-1 on the route is fixed for the sequence).
enum class RoutingLevel { Token, Sequence };

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
  float bias_update_speed = 0.001f;    // gamma, aux-loss-free bias update (SigmoidBias)

  float capacity_factor = 0.0f;               // 0 = dropless
  std::optional<float> eval_capacity_factor;  // when absent, capacity_factor
  int64_t min_capacity = 0;
  DropPolicy drop_policy = DropPolicy::Probs;

  AuxLossType aux_loss_type = AuxLossType::Switch;
  float aux_loss_coeff = 0.01f;  // alpha
  float z_loss_coeff = 0.001f;   // beta

  int64_t n_shared_experts = 0;                 // S, always-on experts
  int64_t shared_expert_intermediate_size = 0;  // F_s, per shared expert
  bool shared_expert_gate = false;              // Qwen2-MoE: sigmoid(x w_g) scales shared output

  // Throws moe::Error naming the first inconsistent field.
  void validate() const;
  // Capacity in assignments per expert for T tokens; -1 when dropless.
  int64_t capacity(int64_t tokens, bool training) const;
  bool uses_noise() const { return router_type == RouterType::NoisyTopK; }
};

// Parses a JSON object; unknown keys and wrong types are errors naming the key.
MoeConfig moe_config_from_json(const nlohmann::json& j);
nlohmann::json moe_config_to_json(const MoeConfig& c);

const char* to_string(RouterType t);
const char* to_string(DropPolicy p);
const char* to_string(AuxLossType t);
const char* to_string(RoutingLevel l);

}  // namespace moe
