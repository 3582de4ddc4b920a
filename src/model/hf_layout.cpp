#include "model/hf_layout.h"

#include "tensor/error.h"

namespace moe {
namespace {

// Name of one of our MoE block's tensors in Qwen2-MoE's (and OLMoE's) layout; `suffix`
// follows "block_sparse_moe.".
std::string qwen2_moe_suffix(const std::string& suffix) {
  if (suffix == "gate.weight") return "gate.weight";
  if (suffix.starts_with("experts.")) {
    const size_t dot = suffix.find('.', 8);
    const std::string expert = suffix.substr(0, dot), matrix = suffix.substr(dot + 1);
    if (matrix == "w1.weight") return expert + ".gate_proj.weight";
    if (matrix == "w3.weight") return expert + ".up_proj.weight";
    if (matrix == "w2.weight") return expert + ".down_proj.weight";
  }
  if (suffix.starts_with("shared_experts.")) return "shared_expert." + suffix.substr(15);
  if (suffix == "shared_expert_gate.weight") return "shared_expert_gate.weight";
  throw Error("no Qwen2-MoE / OLMoE name for 'block_sparse_moe." + suffix + "'");
}

}  // namespace

std::string hf_arch_name(const std::string& name, HfArch arch) {
  const std::string moe_infix = ".block_sparse_moe.";
  const size_t at = name.find(moe_infix);
  if (arch == HfArch::Mixtral || at == std::string::npos) return name;
  return name.substr(0, at) + ".mlp." + qwen2_moe_suffix(name.substr(at + moe_infix.size()));
}

std::vector<HfTensorView> hf_tensor_views(Transformer& model, ParamStore& store, HfWhich which) {
  const ModelConfig& c = model.config();
  const int64_t D = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
  const int64_t hd = c.resolved_head_dim(), F = c.intermediate_size;
  std::vector<HfTensorView> views;
  auto full = [&](ParamRef r) {
    return which == HfWhich::Values  ? store.value(r)
           : which == HfWhich::Grads ? store.grad(r)
                                     : std::span<float>{};
  };
  // Elements [begin, begin + n) of a stored tensor (nothing in Shapes).
  auto part = [&](ParamRef r, int64_t begin, int64_t n) {
    const std::span<float> all = full(r);
    return all.empty() ? all : all.subspan(begin, n);
  };
  // Rows [row0, row0 + rows) of a stored tensor whose rows are `cols` wide.
  auto rows_of = [&](const std::string& name, ParamRef r, int64_t row0, int64_t rows,
                     int64_t cols) {
    views.push_back({name, {rows, cols}, part(r, row0 * cols, rows * cols)});
  };
  auto whole = [&](const std::string& name, const std::string& stored) {
    const ParamStore::Entry& e = store.entry(stored);
    views.push_back({name, e.shape, full(e.ref)});
  };

  whole("model.embed_tokens.weight", "model.embed_tokens.weight");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    whole(p + "input_layernorm.weight", p + "input_layernorm.weight");
    const ParamRef qkv = store.entry(p + "self_attn.qkv_proj.weight").ref;
    rows_of(p + "self_attn.q_proj.weight", qkv, 0, H * hd, D);
    rows_of(p + "self_attn.k_proj.weight", qkv, H * hd, KV * hd, D);
    rows_of(p + "self_attn.v_proj.weight", qkv, (H + KV) * hd, KV * hd, D);
    if (c.qkv_bias) {
      const ParamRef bias = store.entry(p + "self_attn.qkv_proj.bias").ref;
      views.push_back({p + "self_attn.q_proj.bias", {H * hd}, part(bias, 0, H * hd)});
      views.push_back({p + "self_attn.k_proj.bias", {KV * hd}, part(bias, H * hd, KV * hd)});
      views.push_back({p + "self_attn.v_proj.bias", {KV * hd}, part(bias, (H + KV) * hd, KV * hd)});
    }
    if (c.qk_norm) {
      whole(p + "self_attn.q_norm.weight", p + "self_attn.q_norm.weight");
      whole(p + "self_attn.k_norm.weight", p + "self_attn.k_norm.weight");
    }
    whole(p + "self_attn.o_proj.weight", p + "self_attn.o_proj.weight");
    whole(p + "post_attention_layernorm.weight", p + "post_attention_layernorm.weight");
    MoeLayer* moe = model.moe_layer(l);
    if (!moe) {
      const ParamRef w13 = store.entry(p + "mlp.gate_up_proj.weight").ref;
      rows_of(p + "mlp.gate_proj.weight", w13, 0, F, D);
      rows_of(p + "mlp.up_proj.weight", w13, F, F, D);
      whole(p + "mlp.down_proj.weight", p + "mlp.down_proj.weight");
      continue;
    }
    const MoeConfig& m = moe->config();
    const std::string q = p + "block_sparse_moe.";
    const int64_t E = m.num_experts, Fe = m.moe_intermediate_size;
    rows_of(q + "gate.weight", moe->router().weight(), 0, E, D);
    if (m.router_type == RouterType::NoisyTopK)
      rows_of(q + "gate.noise_weight", moe->router().noise_weight(), 0, E, D);
    const bool values = which != HfWhich::Grads;
    if (m.router_type == RouterType::SigmoidBias && values)
      views.push_back(
          {q + "gate.e_score_correction_bias",
           {E},
           which == HfWhich::Values ? moe->router().expert_bias() : std::span<float>{}});
    if (m.router_type == RouterType::ExpertChoice && values)
      views.push_back(
          {q + "gate.expert_threshold",
           {E},
           which == HfWhich::Values ? moe->router().expert_threshold() : std::span<float>{}});
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = q + "experts." + std::to_string(e) + ".";
      rows_of(x + "w1.weight", moe->experts().w13(), e * 2 * Fe, Fe, D);
      rows_of(x + "w3.weight", moe->experts().w13(), e * 2 * Fe + Fe, Fe, D);
      rows_of(x + "w2.weight", moe->experts().w2(), e * D, D, Fe);
    }
    if (m.n_shared_experts > 0) {
      const int64_t Fs = m.n_shared_experts * m.shared_expert_intermediate_size;
      rows_of(q + "shared_experts.gate_proj.weight", moe->shared_w13(), 0, Fs, D);
      rows_of(q + "shared_experts.up_proj.weight", moe->shared_w13(), Fs, Fs, D);
      rows_of(q + "shared_experts.down_proj.weight", moe->shared_w2(), 0, D, Fs);
      if (m.shared_expert_gate)
        rows_of(q + "shared_expert_gate.weight", moe->shared_gate(), 0, 1, D);
    }
  }
  whole("model.norm.weight", "model.norm.weight");
  if (!c.tie_word_embeddings) whole("lm_head.weight", "lm_head.weight");
  return views;
}

}  // namespace moe
