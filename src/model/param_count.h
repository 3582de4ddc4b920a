#pragma once
// Parameter and FLOP accounting for MoE transformers, ours and published ones (docs/FORMULAS.md,
// "Parameter counts"): total parameters, parameters active per token (only k routed experts
// plus the shared ones; embeddings and LM head count as active), and forward FLOPs per token.
#include <algorithm>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace moe {

// An architecture described by Hugging Face config fields; wider than ModelConfig (it can
// describe DeepSeek's multi-head latent attention, Qwen's q/k/v biases, OLMoE's q/k norms).
struct ArchSpec {
  std::string name;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;  // D
  int64_t num_layers = 0;   // L
  bool tie_word_embeddings = false;

  int64_t heads = 0, kv_heads = 0, head_dim = 0;  // standard / grouped-query attention
  bool attention_bias = false;                    // q, k, v biases (Qwen)
  bool qk_norm = false;                           // RMSNorm on q and k (OLMoE)
  // Multi-head latent attention (DeepSeek-V2/V3) when kv_lora_rank > 0; q_lora_rank 0 means
  // a full-rank q projection.
  int64_t q_lora_rank = 0, kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;

  int64_t intermediate_size = 0;  // dense FFN blocks
  int64_t num_experts = 0;        // 0 = dense model
  int64_t top_k = 0;
  int64_t moe_intermediate_size = 0;
  int64_t n_shared_experts = 0;
  int64_t shared_expert_intermediate_size = 0;  // per shared expert
  bool shared_expert_gate = false;
  bool router_noise_weight = false;      // noisy top-k's learned noise projection
  int64_t moe_layer_freq = 1;            // block i is MoE when i >= first_k_dense and
  int64_t first_k_dense = 0;             // (i + 1) % moe_layer_freq == 0
  std::vector<int64_t> mlp_only_layers;  // and i is not listed here (Qwen2-MoE)

  // Group-limited routing (DeepSeek): no effect on the counts, part of the description.
  int64_t n_group = 1, topk_group = 1;
  GroupScore group_score = GroupScore::Top2Sum;

  int64_t context = 4096;  // sequence length the attention FLOPs are counted at

  // Published figures, for presets (0 = none published).
  double published_total = 0, published_active = 0;
  std::string source;

  bool is_moe_layer(int64_t layer) const {
    return num_experts > 0 && layer >= first_k_dense && (layer + 1) % moe_layer_freq == 0 &&
           std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) ==
               mlp_only_layers.end();
  }
};

struct ParamCount {
  int64_t total = 0;
  int64_t active = 0;
  // Forward FLOPs per token: 2 per multiply-add of every active matrix (LM head included, the
  // embedding lookup not) plus causal attention's scores and weighted sums at an average of
  // (context + 1) / 2 positions.
  double forward_flops_per_token = 0;
  // Totals by part.
  int64_t embeddings = 0, attention = 0, norms = 0, dense_ffn = 0, routers = 0;
  int64_t routed_experts = 0, routed_experts_active = 0, shared_experts = 0;
};

ParamCount count_params(const ArchSpec& arch);

ArchSpec arch_from_model_config(const ModelConfig& config, const std::string& name);

// Built-in architectures: published ones and the project's own "default" and
// "dense-baseline" (configs/default.json and configs/dense-baseline.json hold the same).
std::vector<std::string> preset_names();
std::optional<ArchSpec> find_preset(const std::string& name);

// The project's own model configs.
ModelConfig default_model_config();         // 3.4M parameters, 32 experts top-2, every other block
ModelConfig dense_baseline_model_config();  // the same active FLOPs per token, all blocks dense

nlohmann::json param_count_to_json(const ArchSpec& arch, const ParamCount& count);

}  // namespace moe
