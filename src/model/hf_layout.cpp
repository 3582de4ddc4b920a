#include "model/hf_layout.h"

namespace moe {

std::vector<HfTensorView> hf_tensor_views(Transformer& model, ParamStore& store, HfWhich which) {
  const ModelConfig& c = model.config();
  const int64_t D = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
  const int64_t hd = c.resolved_head_dim(), F = c.intermediate_size;
  std::vector<HfTensorView> views;
  auto full = [&](ParamRef r) { return which == HfWhich::Values ? store.value(r) : store.grad(r); };
  // Rows [row0, row0 + rows) of a stored tensor whose rows are `cols` wide.
  auto rows_of = [&](const std::string& name, ParamRef r, int64_t row0, int64_t rows,
                     int64_t cols) {
    views.push_back({name, {rows, cols}, full(r).subspan(row0 * cols, rows * cols)});
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
    if (m.router_type == RouterType::SigmoidBias && which == HfWhich::Values)
      views.push_back({q + "gate.e_score_correction_bias", {E}, moe->router().expert_bias()});
    if (m.router_type == RouterType::ExpertChoice && which == HfWhich::Values)
      views.push_back({q + "gate.expert_threshold", {E}, moe->router().expert_threshold()});
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
