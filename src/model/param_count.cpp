#include "model/param_count.h"

#include <nlohmann/json.hpp>

#include "tensor/error.h"

namespace moe {

namespace {

// A parameter count whose + and * throw instead of wrapping: the sizes may come from a
// user's config, and a count that overflowed would print as a negative number.
struct Count {
  int64_t n = 0;
  Count(int64_t v) : n(v) {}  // implicit, so that sizes mix freely with counts
};
struct CountOverflow {};
Count operator*(Count a, Count b) {
  int64_t r;
  if (__builtin_mul_overflow(a.n, b.n, &r)) throw CountOverflow{};
  return r;
}
Count operator+(Count a, Count b) {
  int64_t r;
  if (__builtin_add_overflow(a.n, b.n, &r)) throw CountOverflow{};
  return r;
}
Count& operator+=(Count& a, Count b) {
  return a = a + b;
}

}  // namespace

ParamCount count_params(const ArchSpec& a) {
  // Every size is a natural number; a negative one would make the checks below meaningless.
  for (int64_t v :
       {a.vocab_size, a.hidden_size, a.num_layers, a.heads, a.kv_heads, a.head_dim, a.q_lora_rank,
        a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.intermediate_size,
        a.num_experts, a.top_k, a.moe_intermediate_size, a.n_shared_experts,
        a.shared_expert_intermediate_size, a.context})
    if (v < 0) throw Error("architecture '" + a.name + "': a size is negative");
  ParamCount c;
  try {
    const Count D = a.hidden_size;
    const bool mla = a.kv_lora_rank > 0;

    // Attention per layer: weights, and the width of q.k and of the weighted values per head.
    Count attn = 0, qk_width = 0, v_width = 0;
    if (mla) {
      const Count qk_head = Count(a.qk_nope_head_dim) + a.qk_rope_head_dim;
      if (a.q_lora_rank > 0)
        attn += Count(a.q_lora_rank) * D + a.q_lora_rank + Count(a.heads) * qk_head * a.q_lora_rank;
      else
        attn += Count(a.heads) * qk_head * D;
      attn += (Count(a.kv_lora_rank) + a.qk_rope_head_dim) * D + a.kv_lora_rank;
      attn += Count(a.heads) * (Count(a.qk_nope_head_dim) + a.v_head_dim) * a.kv_lora_rank;
      attn += D * a.heads * a.v_head_dim;
      qk_width = Count(a.heads) * qk_head;
      v_width = Count(a.heads) * a.v_head_dim;
    } else {
      const Count q = Count(a.heads) * a.head_dim, kv = Count(a.kv_heads) * a.head_dim;
      attn = q * D + Count(2) * kv * D + D * q;
      if (a.attention_bias) attn += q + Count(2) * kv;
      if (a.qk_norm) attn += q + kv;
      qk_width = q;
      v_width = q;
    }

    const Count dense_ffn = Count(3) * D * a.intermediate_size;
    const Count expert = Count(3) * D * a.moe_intermediate_size;
    const Count shared = Count(3) * D * a.n_shared_experts * a.shared_expert_intermediate_size;
    const Count router = Count(a.num_experts) * D * (a.router_noise_weight ? 2 : 1) +
                         (a.shared_expert_gate ? D : Count(0));

    // Per-layer sizes times the number of layers of each kind.
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < a.num_layers; ++l) moe_layers += a.is_moe_layer(l);
    const int64_t dense_layers = a.num_layers - moe_layers;
    c.embeddings = (Count(a.vocab_size) * D * (a.tie_word_embeddings ? 1 : 2)).n;
    c.norms = (D + Count(2) * D * a.num_layers).n;  // final norm + two per block
    c.attention = (attn * a.num_layers).n;
    c.dense_ffn = (dense_ffn * dense_layers).n;
    c.routed_experts = (Count(a.num_experts) * expert * moe_layers).n;
    c.routed_experts_active = (Count(a.top_k) * expert * moe_layers).n;
    c.shared_experts = (shared * moe_layers).n;
    c.routers = (router * moe_layers).n;
    const Count common = Count(c.attention) + c.norms + c.dense_ffn + c.shared_experts + c.routers;
    c.total = (Count(c.embeddings) + common + c.routed_experts).n;
    c.active = (Count(c.embeddings) + common + c.routed_experts_active).n;
    // Widths for the FLOPs below, checked above; from here on the arithmetic is in double.
    const double widths = double((qk_width + v_width).n);
    // Matrices a token multiplies through: every active one but the embedding lookup (a
    // tied table is counted once, as the LM head's [V, D] product).
    const double matmul = double(c.active - c.norms) -
                          (a.tie_word_embeddings ? 0.0 : double(a.vocab_size) * double(D.n));
    const double positions = (double(a.context) + 1.0) / 2.0;
    c.forward_flops_per_token = 2.0 * matmul + 2.0 * double(a.num_layers) * positions * widths;
  } catch (const CountOverflow&) {
    throw Error("architecture '" + a.name + "': the parameter count overflows 64 bits");
  }
  return c;
}

ArchSpec arch_from_model_config(const ModelConfig& m, const std::string& name) {
  ArchSpec a;
  a.name = name;
  a.vocab_size = m.vocab_size;
  a.hidden_size = m.hidden_size;
  a.num_layers = m.num_hidden_layers;
  a.tie_word_embeddings = m.tie_word_embeddings;
  a.heads = m.num_attention_heads;
  a.kv_heads = m.num_key_value_heads;
  a.head_dim = m.resolved_head_dim();
  a.intermediate_size = m.intermediate_size;
  a.moe_layer_freq = m.moe_layer_freq;
  a.first_k_dense = m.first_k_dense_replace;
  a.mlp_only_layers = m.mlp_only_layers;
  a.attention_bias = m.qkv_bias;
  a.qk_norm = m.qk_norm;
  a.context = m.max_position_embeddings;
  if (m.moe) {
    a.num_experts = m.moe->num_experts;
    a.top_k = m.moe->top_k;
    a.moe_intermediate_size = m.moe->moe_intermediate_size;
    a.n_shared_experts = m.moe->n_shared_experts;
    a.shared_expert_intermediate_size = m.moe->shared_expert_intermediate_size;
    a.shared_expert_gate = m.moe->shared_expert_gate;
    a.router_noise_weight = m.moe->router_type == RouterType::NoisyTopK;
  }
  return a;
}

namespace {

// The default models' attention and dense blocks: the best recipe of the sparsity study
// (docs/STUDY.md) that trains within the default job's five minutes on 2 cores. ModelConfig's
// own defaults are the larger D = 256 model of configs/d256-moe.json.
ModelConfig default_blocks() {
  ModelConfig c;
  c.hidden_size = 96;
  c.intermediate_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  return c;
}

}  // namespace

ModelConfig default_model_config() {
  ModelConfig c = default_blocks();
  c.moe_layer_freq = 2;
  MoeConfig m;
  m.hidden_size = c.hidden_size;
  m.moe_intermediate_size = c.intermediate_size / 2;  // k = 2 halves: same active FLOPs
  m.num_experts = 32;
  m.top_k = 2;
  m.router_type = RouterType::TopKSoftmax;
  m.capacity_factor = 0.0f;
  c.moe = m;
  return c;
}

ModelConfig dense_baseline_model_config() {
  return default_blocks();
}

namespace {

ArchSpec gqa(std::string name, int64_t V, int64_t D, int64_t L, int64_t H, int64_t KV, int64_t hd) {
  ArchSpec a;
  a.name = std::move(name);
  a.vocab_size = V;
  a.hidden_size = D;
  a.num_layers = L;
  a.heads = H;
  a.kv_heads = KV;
  a.head_dim = hd;
  return a;
}

std::vector<ArchSpec> build_presets() {
  std::vector<ArchSpec> p;
  {  // mistralai/Mixtral-8x7B-v0.1 config.json
    ArchSpec a = gqa("mixtral-8x7b", 32000, 4096, 32, 32, 8, 128);
    a.num_experts = 8, a.top_k = 2, a.moe_intermediate_size = 14336;
    a.published_total = 46.7e9, a.published_active = 12.9e9;
    a.source = "Mixtral of Experts (Jiang et al. 2024): 46.7B total, 12.9B active";
    p.push_back(a);
  }
  {  // mistralai/Mixtral-8x22B-v0.1 config.json
    ArchSpec a = gqa("mixtral-8x22b", 32000, 6144, 56, 48, 8, 128);
    a.num_experts = 8, a.top_k = 2, a.moe_intermediate_size = 16384;
    a.published_total = 141e9, a.published_active = 39e9;
    a.source = "Mistral AI, Mixtral 8x22B announcement: 141B total, 39B active";
    p.push_back(a);
  }
  {  // deepseek-ai/DeepSeek-V2 config.json (MLA)
    ArchSpec a = gqa("deepseek-v2", 102400, 5120, 60, 128, 128, 0);
    a.q_lora_rank = 1536, a.kv_lora_rank = 512;
    a.qk_nope_head_dim = 128, a.qk_rope_head_dim = 64, a.v_head_dim = 128;
    a.intermediate_size = 12288, a.first_k_dense = 1;
    a.num_experts = 160, a.top_k = 6, a.moe_intermediate_size = 1536;
    a.n_group = 8, a.topk_group = 3, a.group_score = GroupScore::Max;
    a.n_shared_experts = 2, a.shared_expert_intermediate_size = 1536;
    a.published_total = 236e9, a.published_active = 21e9;
    a.source = "DeepSeek-V2 (DeepSeek-AI 2024): 236B total, 21B activated";
    p.push_back(a);
  }
  {  // deepseek-ai/DeepSeek-V3 config.json (MLA; the multi-token-prediction module excluded)
    ArchSpec a = gqa("deepseek-v3", 129280, 7168, 61, 128, 128, 0);
    a.q_lora_rank = 1536, a.kv_lora_rank = 512;
    a.qk_nope_head_dim = 128, a.qk_rope_head_dim = 64, a.v_head_dim = 128;
    a.intermediate_size = 18432, a.first_k_dense = 3;
    a.num_experts = 256, a.top_k = 8, a.moe_intermediate_size = 2048;
    a.n_group = 8, a.topk_group = 4, a.group_score = GroupScore::Top2Sum;
    a.n_shared_experts = 1, a.shared_expert_intermediate_size = 2048;
    a.published_total = 671e9, a.published_active = 37e9;
    a.source = "DeepSeek-V3 (DeepSeek-AI 2024): 671B total, 37B activated";
    p.push_back(a);
  }
  {  // Qwen/Qwen1.5-MoE-A2.7B config.json
    ArchSpec a = gqa("qwen1.5-moe-a2.7b", 151936, 2048, 24, 16, 16, 128);
    a.attention_bias = true;
    a.num_experts = 60, a.top_k = 4, a.moe_intermediate_size = 1408;
    a.n_shared_experts = 1, a.shared_expert_intermediate_size = 5632, a.shared_expert_gate = true;
    a.published_total = 14.3e9, a.published_active = 2.7e9;
    a.source = "Qwen1.5-MoE-A2.7B model card: 14.3B total, 2.7B activated";
    p.push_back(a);
  }
  {  // allenai/OLMoE-1B-7B-0924 config.json
    ArchSpec a = gqa("olmoe-1b-7b", 50304, 2048, 16, 16, 16, 128);
    a.qk_norm = true;
    a.num_experts = 64, a.top_k = 8, a.moe_intermediate_size = 1024;
    a.published_total = 6.9e9, a.published_active = 1.3e9;
    a.source = "OLMoE (Muennighoff et al. 2024): 6.9B total, 1.3B active";
    p.push_back(a);
  }
  {  // xai-org/grok-1 (model.py): widening factor 8 gives a 32768-wide expert FFN
    ArchSpec a = gqa("grok-1", 131072, 6144, 64, 48, 8, 128);
    a.tie_word_embeddings = true;
    a.num_experts = 8, a.top_k = 2, a.moe_intermediate_size = 32768;
    a.published_total = 314e9;
    a.source = "xAI, Grok-1 open release: 314B parameters";
    p.push_back(a);
  }
  p.push_back(arch_from_model_config(default_model_config(), "default"));
  p.push_back(arch_from_model_config(dense_baseline_model_config(), "dense-baseline"));
  return p;
}

const std::vector<ArchSpec>& presets() {
  static const std::vector<ArchSpec> all = build_presets();
  return all;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const ArchSpec& a : presets()) names.push_back(a.name);
  return names;
}

std::optional<ArchSpec> find_preset(const std::string& name) {
  for (const ArchSpec& a : presets())
    if (a.name == name) return a;
  return std::nullopt;
}

nlohmann::json param_count_to_json(const ArchSpec& a, const ParamCount& c) {
  nlohmann::json j = {{"name", a.name},
                      {"total_params", c.total},
                      {"active_params", c.active},
                      {"active_fraction", double(c.active) / double(c.total)},
                      {"forward_flops_per_token", c.forward_flops_per_token},
                      {"context", a.context},
                      {"breakdown",
                       {{"embeddings", c.embeddings},
                        {"attention", c.attention},
                        {"norms", c.norms},
                        {"dense_ffn", c.dense_ffn},
                        {"routers", c.routers},
                        {"routed_experts", c.routed_experts},
                        {"routed_experts_active", c.routed_experts_active},
                        {"shared_experts", c.shared_experts}}}};
  if (a.published_total > 0) {
    j["published_total"] = a.published_total;
    j["total_vs_published"] = double(c.total) / a.published_total;
  }
  if (a.published_active > 0) {
    j["published_active"] = a.published_active;
    j["active_vs_published"] = double(c.active) / a.published_active;
  }
  if (!a.source.empty()) j["source"] = a.source;
  return j;
}

}  // namespace moe
