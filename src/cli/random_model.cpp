#include "cli/random_model.h"

#include <filesystem>
#include <map>
#include <optional>
#include <vector>

#include "model/param_count.h"
#include "run/checkpoint.h"
#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/quant.h"
#include "tensor/rng.h"
#include "tensor/safetensors.h"

namespace moe::cli {
namespace {

// Every tensor of a Mixtral checkpoint with normal(0, 0.02) values (norms 1), in the order
// a checkpoint lists them; `add(name, tensor, is_matrix)` takes each.
template <typename Add>
void random_tensors(const ModelConfig& c, Add&& add) {
  const int64_t D = c.hidden_size, V = c.vocab_size, hd = c.resolved_head_dim(),
                H = c.num_attention_heads, KV = c.num_key_value_heads, E = c.moe->num_experts,
                F = c.moe->moe_intermediate_size;
  Rng rng(1);
  const auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    Tensor t({rows, cols}, name);
    rng.fill_normal(t.span(), 0.0f, 0.02f);
    add(name, std::move(t), true);
  };
  const auto norm = [&](const std::string& name) {
    Tensor t({D}, name);
    t.fill(1.0f);
    add(name, std::move(t), false);
  };
  matrix("model.embed_tokens.weight", V, D);
  matrix("lm_head.weight", V, D);
  norm("model.norm.weight");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    norm(p + "input_layernorm.weight");
    norm(p + "post_attention_layernorm.weight");
    matrix(p + "self_attn.q_proj.weight", H * hd, D);
    matrix(p + "self_attn.k_proj.weight", KV * hd, D);
    matrix(p + "self_attn.v_proj.weight", KV * hd, D);
    matrix(p + "self_attn.o_proj.weight", D, H * hd);
    Tensor router({E, D}, "router");
    rng.fill_normal(router.span(), 0.0f, 0.02f);
    add(p + "block_sparse_moe.gate.weight", std::move(router), false);  // routers stay fp32
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      matrix(ep + "w1.weight", F, D);
      matrix(ep + "w3.weight", F, D);
      matrix(ep + "w2.weight", D, F);
    }
  }
}

}  // namespace

ModelConfig random_model_config(const std::string& name) {
  ModelConfig c;
  c.vocab_size = 32000;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 8;
  c.max_position_embeddings = 4096;
  c.rope_theta = 1e6;
  require(name == "mixtral-d1024" || name == "mixtral-d512",
          "--random: unknown model '" + name + "' (mixtral-d1024 or mixtral-d512)");
  c.hidden_size = name == "mixtral-d1024" ? 1024 : 512;
  MoeConfig m;
  m.hidden_size = c.hidden_size;
  m.moe_intermediate_size = name == "mixtral-d1024" ? 2816 : 1408;
  m.num_experts = 8;
  m.top_k = 2;
  m.router_type = RouterType::TopKSoftmax;
  c.moe = m;
  c.intermediate_size = m.moe_intermediate_size;
  c.validate();
  return c;
}

OwnedWeights random_weights(const ModelConfig& c, const std::string& dtype) {
  OwnedWeights w;
  const bool bf16 = dtype == "bf16";
  const std::optional<QuantType> quant = dtype == "q8_0"   ? std::optional(QuantType::Q8_0)
                                         : dtype == "q4_0" ? std::optional(QuantType::Q4_0)
                                         : dtype == "q4_k" ? std::optional(QuantType::Q4_K)
                                                           : std::nullopt;
  random_tensors(c, [&](const std::string& name, Tensor t, bool is_matrix) {
    if (quant && is_matrix) return w.add_quantized(name, t, *quant);
    if (!bf16 || !is_matrix) return w.add_f32(name, std::move(t));
    std::vector<uint16_t> bits(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) bits[static_cast<size_t>(i)] = float_to_bf16(t[i]);
    w.add_bf16(name, t.shape(), std::move(bits));
  });
  return w;
}

std::string random_checkpoint(const ModelConfig& c, bool bf16, const std::string& folder,
                              const std::string& name) {
  const std::string path = folder + "/" + name + (bf16 ? "-bf16" : "-f32") + ".safetensors";
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    try {
      const MappedSafetensors existing(path);
      if (existing.header().tensors.count("model.layers." +
                                          std::to_string(c.num_hidden_layers - 1) +
                                          ".block_sparse_moe.experts.0.w1.weight"))
        return path;
    } catch (const Error&) {
    }  // not a usable checkpoint: written anew
  }
  std::filesystem::create_directories(folder, ec);
  require(!ec, folder + ": cannot create: " + ec.message());
  std::map<std::string, Tensor> tensors;
  random_tensors(c,
                 [&](const std::string& n, Tensor t, bool) { tensors.emplace(n, std::move(t)); });
  write_safetensors(path, tensors, {}, bf16 ? StoredDtype::BF16 : StoredDtype::F32);
  return path;
}

uint64_t total_parameters(const ModelConfig& c) {
  return static_cast<uint64_t>(count_params(arch_from_model_config(c, "bench")).total);
}

}  // namespace moe::cli
