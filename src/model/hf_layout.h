#pragma once
// The model's tensors under Hugging Face's names and shapes (Mixtral / Llama / DeepSeek):
// q_proj/k_proj/v_proj, gate_proj/up_proj and each expert's w1/w3 are contiguous row blocks
// of our stacked tensors, so every Hugging Face tensor is a plain view, no copy.
//   model.embed_tokens.weight                          [V, D]
//   model.layers.{l}.input_layernorm.weight            [D]
//   model.layers.{l}.self_attn.{q,k,v,o}_proj.weight   [H hd, D] [KV hd, D] [KV hd, D] [D, H hd]
//   model.layers.{l}.post_attention_layernorm.weight   [D]
//   model.layers.{l}.mlp.{gate,up,down}_proj.weight    dense blocks
//   model.layers.{l}.block_sparse_moe.gate.weight      [E, D] router
//   model.layers.{l}.block_sparse_moe.gate.noise_weight             noisy top-k only
//   model.layers.{l}.block_sparse_moe.gate.e_score_correction_bias  [E] selection bias
//   model.layers.{l}.block_sparse_moe.experts.{e}.{w1,w3,w2}.weight [F, D] [F, D] [D, F]
//   model.layers.{l}.block_sparse_moe.shared_experts.{gate,up,down}_proj.weight
//       all shared experts as one MLP of width S F_s (DeepSeek-V2's layout)
//   model.layers.{l}.block_sparse_moe.shared_expert_gate.weight     [1, D]
//   model.norm.weight [D],  lm_head.weight [V, D] (absent when tied)
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/transformer.h"
#include "tensor/params.h"

namespace moe {

struct HfTensorView {
  std::string name;
  Shape shape;
  std::span<float> data;
};

enum class HfWhich { Values, Grads, Shapes };

// The Hugging Face architectures whose checkpoints `moe` reads (and, Mixtral and Qwen2-MoE,
// writes). Qwen2-MoE and OLMoE name the MoE block "mlp." with gate_proj/up_proj/down_proj
// experts and "shared_expert." (one); Mixtral "block_sparse_moe." with w1/w3/w2.
enum class HfArch { Mixtral, Qwen2Moe, Olmoe };

// The one table of a MoE block's tensor names per architecture, read by the loader, the
// exporter, the inference engine and the GGUF mapping. Every name is
// "model.layers.{l}." + block + the tensor: "gate.weight" (router),
// "experts.{e}.<expert matrix>.weight", "<shared>{gate,up,down}_proj.weight",
// "shared_expert_gate.weight". A run of `moe train` uses Mixtral's names, with DeepSeek's
// "shared_experts." for its shared experts.
struct MoeTensorNames {
  std::string_view block;                                // "block_sparse_moe." | "mlp."
  std::string_view expert_gate, expert_up, expert_down;  // "w1", "w3", "w2" | "gate_proj", ...
  std::string_view shared;                               // "shared_experts." | "shared_expert."
};
const MoeTensorNames& moe_tensor_names(HfArch arch);

enum class ExpertMatrix { Gate, Up, Down };
// "model.layers.{layer}." + the block's prefix, e.g. "model.layers.3.block_sparse_moe.".
std::string moe_block_prefix(HfArch arch, int64_t layer);
std::string router_tensor_name(HfArch arch, int64_t layer);
std::string expert_tensor_name(HfArch arch, int64_t layer, int64_t expert, ExpertMatrix matrix);

// `name` (one of hf_tensor_views' names, Mixtral's layout) in `arch`'s layout; throws Error
// for a tensor the architecture has no name for.
std::string hf_arch_name(const std::string& name, HfArch arch);

// Views of every tensor (Values) or of every trainable tensor's gradient (Grads; the
// selection bias has none and is left out); Shapes: the Values' names and shapes with empty
// data, usable before the store is allocated.
std::vector<HfTensorView> hf_tensor_views(Transformer& model, ParamStore& store, HfWhich which);

}  // namespace moe
