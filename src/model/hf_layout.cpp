#include "model/hf_layout.h"

#include "tensor/error.h"

namespace moe {
const MoeTensorNames& moe_tensor_names(HfArch arch) {
  static const MoeTensorNames mixtral{"block_sparse_moe.", "w1", "w3", "w2", "shared_experts."};
  static const MoeTensorNames qwen2_moe{"mlp.", "gate_proj", "up_proj", "down_proj",
                                        "shared_expert."};
  return arch == HfArch::Mixtral ? mixtral : qwen2_moe;
}

std::string moe_block_prefix(HfArch arch, int64_t layer) {
  return "model.layers." + std::to_string(layer) + "." + std::string(moe_tensor_names(arch).block);
}

std::string router_tensor_name(HfArch arch, int64_t layer) {
  return moe_block_prefix(arch, layer) + "gate.weight";
}

std::string expert_tensor_name(HfArch arch, int64_t layer, int64_t expert, ExpertMatrix matrix) {
  const MoeTensorNames& n = moe_tensor_names(arch);
  const std::string_view part = matrix == ExpertMatrix::Gate ? n.expert_gate
                                : matrix == ExpertMatrix::Up ? n.expert_up
                                                             : n.expert_down;
  return moe_block_prefix(arch, layer) + "experts." + std::to_string(expert) + "." +
         std::string(part) + ".weight";
}

namespace {

// `suffix` (what follows Mixtral's block prefix) in `to`'s names.
std::string moe_suffix_in(const std::string& suffix, HfArch to) {
  const MoeTensorNames &from = moe_tensor_names(HfArch::Mixtral), &names = moe_tensor_names(to);
  if (suffix == "gate.weight" || suffix == "shared_expert_gate.weight") return suffix;
  if (suffix.starts_with("experts.")) {
    const size_t dot = suffix.find('.', 8);
    const std::string expert = suffix.substr(0, dot + 1), matrix = suffix.substr(dot + 1);
    for (const auto& [ours, theirs] : {std::pair{from.expert_gate, names.expert_gate},
                                       {from.expert_up, names.expert_up},
                                       {from.expert_down, names.expert_down}})
      if (matrix == std::string(ours) + ".weight") return expert + std::string(theirs) + ".weight";
  }
  if (suffix.starts_with(from.shared))
    return std::string(names.shared) + suffix.substr(from.shared.size());
  throw Error("no Qwen2-MoE / OLMoE name for '" + std::string(from.block) + suffix + "'");
}

}  // namespace

std::string hf_arch_name(const std::string& name, HfArch arch) {
  const std::string moe_infix = "." + std::string(moe_tensor_names(HfArch::Mixtral).block);
  const size_t at = name.find(moe_infix);
  if (arch == HfArch::Mixtral || at == std::string::npos) return name;
  return name.substr(0, at + 1) + std::string(moe_tensor_names(arch).block) +
         moe_suffix_in(name.substr(at + moe_infix.size()), arch);
}

namespace {

// Views of a ParamStore's tensors, whole or as row blocks of a stacked tensor.
struct ViewList {
  ParamStore& store;
  HfWhich which;
  std::vector<HfTensorView> views;

  std::span<float> full(ParamRef r) const {
    return which == HfWhich::Values  ? store.value(r)
           : which == HfWhich::Grads ? store.grad(r)
                                     : std::span<float>{};
  }
  // Elements [begin, begin + n) of a stored tensor (nothing in Shapes).
  std::span<float> part(ParamRef r, int64_t begin, int64_t n) const {
    const std::span<float> all = full(r);
    return all.empty() ? all : all.subspan(begin, n);
  }
  // Rows [row0, row0 + rows) of a stored tensor whose rows are `cols` wide.
  void rows_of(const std::string& name, ParamRef r, int64_t row0, int64_t rows, int64_t cols) {
    views.push_back({name, {rows, cols}, part(r, row0 * cols, rows * cols)});
  }
  void whole(const std::string& name, const std::string& stored) {
    const ParamStore::Entry& e = store.entry(stored);
    views.push_back({name, e.shape, full(e.ref)});
  }
  // A tensor the store does not hold as a parameter (no gradient: left out of Grads).
  void state(const std::string& name, int64_t n, std::span<float> values) {
    if (which != HfWhich::Grads)
      views.push_back({name, {n}, which == HfWhich::Values ? values : std::span<float>{}});
  }
};

void attention_views(ViewList& v, const ModelConfig& c, const std::string& p) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
  const int64_t hd = c.resolved_head_dim();
  const ParamRef qkv = v.store.entry(p + "self_attn.qkv_proj.weight").ref;
  v.rows_of(p + "self_attn.q_proj.weight", qkv, 0, H * hd, D);
  v.rows_of(p + "self_attn.k_proj.weight", qkv, H * hd, KV * hd, D);
  v.rows_of(p + "self_attn.v_proj.weight", qkv, (H + KV) * hd, KV * hd, D);
  if (c.qkv_bias) {
    const ParamRef bias = v.store.entry(p + "self_attn.qkv_proj.bias").ref;
    v.views.push_back({p + "self_attn.q_proj.bias", {H * hd}, v.part(bias, 0, H * hd)});
    v.views.push_back({p + "self_attn.k_proj.bias", {KV * hd}, v.part(bias, H * hd, KV * hd)});
    v.views.push_back(
        {p + "self_attn.v_proj.bias", {KV * hd}, v.part(bias, (H + KV) * hd, KV * hd)});
  }
  if (c.qk_norm) {
    v.whole(p + "self_attn.q_norm.weight", p + "self_attn.q_norm.weight");
    v.whole(p + "self_attn.k_norm.weight", p + "self_attn.k_norm.weight");
  }
  v.whole(p + "self_attn.o_proj.weight", p + "self_attn.o_proj.weight");
}

void moe_views(ViewList& v, MoeLayer& moe, int64_t layer, int64_t D) {
  const MoeConfig& m = moe.config();
  const std::string q = moe_block_prefix(HfArch::Mixtral, layer);
  const int64_t E = m.num_experts, Fe = m.moe_intermediate_size;
  v.rows_of(q + "gate.weight", moe.router().weight(), 0, E, D);
  if (m.router_type == RouterType::NoisyTopK)
    v.rows_of(q + "gate.noise_weight", moe.router().noise_weight(), 0, E, D);
  if (m.router_type == RouterType::SigmoidBias)
    v.state(q + "gate.e_score_correction_bias", E, moe.router().expert_bias());
  if (m.router_type == RouterType::ExpertChoice)
    v.state(q + "gate.expert_threshold", E, moe.router().expert_threshold());
  for (int64_t e = 0; e < E; ++e) {
    const auto expert = [&](ExpertMatrix matrix) {
      return expert_tensor_name(HfArch::Mixtral, layer, e, matrix);
    };
    v.rows_of(expert(ExpertMatrix::Gate), moe.experts().w13(), e * 2 * Fe, Fe, D);
    v.rows_of(expert(ExpertMatrix::Up), moe.experts().w13(), e * 2 * Fe + Fe, Fe, D);
    v.rows_of(expert(ExpertMatrix::Down), moe.experts().w2(), e * D, D, Fe);
  }
  if (m.n_shared_experts == 0) return;
  const int64_t Fs = m.n_shared_experts * m.shared_expert_intermediate_size;
  const std::string shared = q + std::string(moe_tensor_names(HfArch::Mixtral).shared);
  v.rows_of(shared + "gate_proj.weight", moe.shared_w13(), 0, Fs, D);
  v.rows_of(shared + "up_proj.weight", moe.shared_w13(), Fs, Fs, D);
  v.rows_of(shared + "down_proj.weight", moe.shared_w2(), 0, D, Fs);
  if (m.shared_expert_gate) v.rows_of(q + "shared_expert_gate.weight", moe.shared_gate(), 0, 1, D);
}

}  // namespace

std::vector<HfTensorView> hf_tensor_views(Transformer& model, ParamStore& store, HfWhich which) {
  const ModelConfig& c = model.config();
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  ViewList v{store, which, {}};
  v.whole("model.embed_tokens.weight", "model.embed_tokens.weight");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    v.whole(p + "input_layernorm.weight", p + "input_layernorm.weight");
    attention_views(v, c, p);
    v.whole(p + "post_attention_layernorm.weight", p + "post_attention_layernorm.weight");
    if (MoeLayer* moe = model.moe_layer(l)) {
      moe_views(v, *moe, l, D);
      continue;
    }
    const ParamRef w13 = store.entry(p + "mlp.gate_up_proj.weight").ref;
    v.rows_of(p + "mlp.gate_proj.weight", w13, 0, F, D);
    v.rows_of(p + "mlp.up_proj.weight", w13, F, F, D);
    v.whole(p + "mlp.down_proj.weight", p + "mlp.down_proj.weight");
  }
  v.whole("model.norm.weight", "model.norm.weight");
  if (!c.tie_word_embeddings) v.whole("lm_head.weight", "lm_head.weight");
  return std::move(v.views);
}

}  // namespace moe
