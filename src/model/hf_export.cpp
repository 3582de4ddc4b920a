#include "model/hf_export.h"

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "model/hf_layout.h"
#include "moe/router.h"
#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

// The shortest decimal that reads back as the same value: 1e-05 rather than the
// 9.999999747378752e-06 a float promoted to double prints as.
template <typename Real>
double decimal(Real v) {
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
  *end = '\0';
  return std::strtod(buf, nullptr);
}

template <typename Real>
std::string text_of(Real v) {
  std::ostringstream s;
  s << decimal(v);
  return s.str();
}

bool every_block_moe(const ModelConfig& c) {
  return c.moe && c.first_k_dense_replace == 0 && c.moe_layer_freq == 1;
}

nlohmann::json id_or_null(int32_t id) {
  return id >= 0 ? nlohmann::json(id) : nlohmann::json();
}
nlohmann::json piece_or_null(int32_t id, const std::string& piece) {
  return id >= 0 ? nlohmann::json(piece) : nlohmann::json();
}

void scale_tensor(Tensor& t, float factor) {
  if (factor == 1.0f) return;
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] *= factor;
}

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("tokenizer '" + path + "': cannot open");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void prepare_folder(const std::string& dir, bool force) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw Error("--out '" + dir + "' exists and is not a folder");
    if (!fs::is_empty(dir, ec) && !force)
      throw Error("--out '" + dir + "' is not empty (pass --force to write into it)");
  }
  fs::create_directories(dir, ec);
  if (ec) throw Error("--out '" + dir + "': cannot create: " + ec.message());
}

}  // namespace

std::string hf_model_type(const ModelConfig& c, bool allow_dropless) {
  const std::string no_equivalent =
      " has no equivalent in Hugging Face's Mixtral or Qwen2-MoE, so the run cannot be exported";
  const bool mixtral_shape =
      every_block_moe(c) && c.moe->n_shared_experts == 0 && renormalises(*c.moe);
  if (c.moe) {
    const MoeConfig& m = *c.moe;
    if (m.router_type == RouterType::SigmoidBias)
      throw Error("router_type sigmoid_bias (sigmoid scores with a selection bias, DeepSeek-V3)" +
                  no_equivalent);
    if (m.router_type == RouterType::ExpertChoice)
      throw Error("router_type expert_choice (experts pick their tokens)" + no_equivalent);
    if (m.n_group > 1 && m.topk_group < m.n_group)
      throw Error("group-limited routing (n_group " + std::to_string(m.n_group) + ", topk_group " +
                  std::to_string(m.topk_group) + ")" + no_equivalent);
    // Token choice evaluates dropless unless eval_capacity_factor asks for a capacity.
    if (!allow_dropless && m.capacity(1, false) >= 0)
      throw Error("eval_capacity_factor " + text_of(*m.eval_capacity_factor) +
                  " drops tokens at inference; Hugging Face's MoE blocks never drop (moe export "
                  "--dropless exports it as dropless)");
  }
  // transformers' Qwen2-MoE attention requires head_dim * heads = hidden_size.
  if (!mixtral_shape && c.resolved_head_dim() * c.num_attention_heads != c.hidden_size)
    throw Error("head_dim " + std::to_string(c.resolved_head_dim()) + " with " +
                std::to_string(c.num_attention_heads) + " heads != hidden_size " +
                std::to_string(c.hidden_size) +
                " (Qwen2-MoE's attention needs them equal, and this layout needs Qwen2-MoE)");
  return mixtral_shape ? "mixtral" : "qwen2_moe";
}

nlohmann::json hf_config_json(const ModelConfig& c, const std::string& model_type,
                              const HfTokenizer& tokenizer, HfDtype dtype) {
  nlohmann::json j;
  j["model_type"] = model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.resolved_head_dim();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["initializer_range"] = decimal(c.initializer_range);
  j["rms_norm_eps"] = decimal(c.rms_norm_eps);
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["use_cache"] = true;
  j["output_router_logits"] = false;
  j["torch_dtype"] = dtype == HfDtype::BF16 ? "bfloat16" : "float32";
  j["bos_token_id"] = id_or_null(tokenizer.bos_id);
  j["eos_token_id"] = id_or_null(tokenizer.eos_id);
  j["pad_token_id"] = nullptr;
  const bool aux = c.moe && c.moe->aux_loss_type != AuxLossType::None;
  j["router_aux_loss_coef"] = aux ? decimal(c.moe->aux_loss_coeff) : 0.0;

  if (model_type == "mixtral") {
    const MoeConfig& m = *c.moe;
    j["architectures"] = {"MixtralForCausalLM"};
    j["intermediate_size"] = m.moe_intermediate_size;  // Mixtral's experts' width
    j["num_local_experts"] = m.num_experts;
    j["num_experts_per_tok"] = m.top_k;
    j["sliding_window"] = nullptr;
    // Training only, as ours; Hugging Face also jitters the experts' input, we the router's.
    j["router_jitter_noise"] = decimal(m.jitter_eps);
    return j;
  }
  require(model_type == "qwen2_moe", "Hugging Face export: unknown model type " + model_type);
  j["architectures"] = {"Qwen2MoeForCausalLM"};
  j["intermediate_size"] = c.intermediate_size;  // the dense blocks' width
  j["use_sliding_window"] = false;
  j["sliding_window"] = nullptr;
  j["max_window_layers"] = c.num_hidden_layers;
  j["qkv_bias"] = true;
  nlohmann::json dense_layers = nlohmann::json::array();
  if (!c.moe) {
    // Qwen2-MoE builds no MoE block when num_experts is 0: every block is dense.
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) dense_layers.push_back(l);
    j["num_experts"] = 0;
    j["num_experts_per_tok"] = 1;
    j["moe_intermediate_size"] = c.intermediate_size;
    j["shared_expert_intermediate_size"] = c.intermediate_size;
    j["decoder_sparse_step"] = 1;
    j["norm_topk_prob"] = false;
    j["mlp_only_layers"] = dense_layers;
    return j;
  }
  const MoeConfig& m = *c.moe;
  for (int64_t l = 0; l < c.first_k_dense_replace && l < c.num_hidden_layers; ++l)
    dense_layers.push_back(l);
  j["num_experts"] = m.num_experts;
  j["num_experts_per_tok"] = m.top_k;
  j["moe_intermediate_size"] = m.moe_intermediate_size;
  // Our shared experts run as one MLP of their summed width, as Qwen2-MoE's one shared expert.
  j["shared_expert_intermediate_size"] =
      m.n_shared_experts > 0 ? m.n_shared_experts * m.shared_expert_intermediate_size : 1;
  j["decoder_sparse_step"] = c.moe_layer_freq;
  j["mlp_only_layers"] = dense_layers;
  j["norm_topk_prob"] = renormalises(m);
  return j;
}

std::map<std::string, Tensor> hf_export_tensors(Transformer& model, ParamStore& store,
                                                const std::string& model_type) {
  const ModelConfig& c = model.config();
  const bool qwen = model_type == "qwen2_moe";
  std::map<std::string, Tensor> out;
  for (const HfTensorView& v : hf_tensor_views(model, store, HfWhich::Values)) {
    // Noisy top-k routes on clean logits at evaluation.
    if (v.name.ends_with(".block_sparse_moe.gate.noise_weight")) continue;
    const std::string name = hf_arch_name(v.name, qwen ? HfArch::Qwen2Moe : HfArch::Mixtral);
    Tensor t(v.shape);
    std::copy(v.data.begin(), v.data.end(), t.data());
    out.emplace(name, std::move(t));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (qwen) {
      const int64_t hd = c.resolved_head_dim();
      out.emplace(p + "self_attn.q_proj.bias", Tensor({c.num_attention_heads * hd}));
      out.emplace(p + "self_attn.k_proj.bias", Tensor({c.num_key_value_heads * hd}));
      out.emplace(p + "self_attn.v_proj.bias", Tensor({c.num_key_value_heads * hd}));
    }
    const MoeLayer* moe = model.moe_layer(l);
    if (!moe) continue;
    const MoeConfig& m = moe->config();
    const std::string q = p + (qwen ? "mlp." : "block_sparse_moe.");
    for (int64_t e = 0; e < m.num_experts; ++e)
      scale_tensor(
          out.at(q + "experts." + std::to_string(e) + (qwen ? ".down_proj" : ".w2") + ".weight"),
          m.routed_scaling_factor);
    if (!qwen) continue;
    const int64_t D = c.hidden_size;
    if (m.n_shared_experts == 0) {
      out.emplace(q + "shared_expert.gate_proj.weight", Tensor({1, D}));
      out.emplace(q + "shared_expert.up_proj.weight", Tensor({1, D}));
      out.emplace(q + "shared_expert.down_proj.weight", Tensor({D, 1}));
    }
    if (!m.shared_expert_gate) {
      out.emplace(q + "shared_expert_gate.weight", Tensor({1, D}));  // sigmoid(0) = 1/2
      scale_tensor(out.at(q + "shared_expert.down_proj.weight"), 2.0f);
    }
  }
  return out;
}

std::string export_hf_checkpoint(Transformer& model, ParamStore& store,
                                 const HfTokenizer& tokenizer, const std::string& dir,
                                 const HfExportOptions& options) {
  const ModelConfig& c = model.config();
  const std::string type = hf_model_type(c, options.allow_dropless);
  prepare_folder(dir, options.force);
  write_safetensors(dir + "/model.safetensors", hf_export_tensors(model, store, type),
                    {{"format", "pt"}}, options.dtype);  // transformers requires "format"
  if (!tokenizer.model_path.empty()) {
    write_file_atomic(dir + "/tokenizer.model", read_whole_file(tokenizer.model_path));
    // Our streams carry no BOS and end each document with EOS; prompts are encoded bare.
    const nlohmann::json tokenizer_config = {
        {"tokenizer_class", "LlamaTokenizer"},
        {"bos_token", piece_or_null(tokenizer.bos_id, tokenizer.bos_piece)},
        {"eos_token", piece_or_null(tokenizer.eos_id, tokenizer.eos_piece)},
        {"unk_token", piece_or_null(tokenizer.unk_id, tokenizer.unk_piece)},
        {"pad_token", nullptr},
        {"add_bos_token", false},
        {"add_eos_token", false},
        {"legacy", true},
        {"clean_up_tokenization_spaces", false},
        {"model_max_length", c.max_position_embeddings}};
    write_file_atomic(dir + "/tokenizer_config.json", tokenizer_config.dump(2) + "\n");
  }
  const nlohmann::json generation = {{"bos_token_id", id_or_null(tokenizer.bos_id)},
                                     {"eos_token_id", id_or_null(tokenizer.eos_id)}};
  write_file_atomic(dir + "/generation_config.json", generation.dump(2) + "\n");
  // Last: a folder with a config.json is a complete export.
  write_file_atomic(dir + "/config.json",
                    hf_config_json(c, type, tokenizer, options.dtype).dump(2) + "\n");
  return type;
}

}  // namespace moe
