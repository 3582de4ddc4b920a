#include "model/hf_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "model/config.h"
#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kIndexFile = "model.safetensors.index.json";

// Typed reads of config.json's keys; errors say "<source> field '<key>' ...".
class HfKeys {
 public:
  HfKeys(const nlohmann::json& j, const std::string& source) : j_(j), what_(source) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  int64_t integer(const std::string& key) const {
    if (!has(key)) throw Error(what_ + ": missing key '" + key + "'");
    return json_int(j_.at(key), what_.c_str(), key);
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  double number(const std::string& key, double fallback) const {
    return has(key) ? json_number(j_.at(key), what_.c_str(), key) : fallback;
  }
  bool boolean(const std::string& key, bool fallback) const {
    return has(key) ? json_bool(j_.at(key), what_.c_str(), key) : fallback;
  }
  std::string text(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    require(j_.at(key).is_string(), what_ + " field '" + key + "' must be a string");
    return j_.at(key).get<std::string>();
  }
  std::vector<int64_t> integers(const std::string& key) const {
    std::vector<int64_t> out;
    if (!has(key)) return out;
    require(j_.at(key).is_array(), what_ + " field '" + key + "' must be an array");
    for (const auto& v : j_.at(key)) out.push_back(json_int(v, what_.c_str(), key));
    return out;
  }
  [[noreturn]] void unsupported(const std::string& key, const std::string& why) const {
    throw Error(what_ + " field '" + key + "': " + why);
  }

 private:
  const nlohmann::json& j_;
  std::string what_;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open '" + path + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

HfArch hf_arch(const std::string& model_type, const std::string& source) {
  if (model_type == "mixtral") return HfArch::Mixtral;
  if (model_type == "qwen2_moe") return HfArch::Qwen2Moe;
  if (model_type == "olmoe") return HfArch::Olmoe;
  throw Error(source + ": model_type '" + model_type +
              "' is not supported (supported: mixtral, qwen2_moe, olmoe)");
}

// The keys every architecture shares: sizes, attention heads, RoPE, norm, tied embeddings.
void read_transformer_keys(const HfKeys& k, HfArch arch, const std::string& source,
                           ModelConfig& c) {
  c.vocab_size = k.integer("vocab_size");
  c.hidden_size = k.integer("hidden_size");
  c.num_hidden_layers = k.integer("num_hidden_layers");
  c.num_attention_heads = k.integer("num_attention_heads");
  c.num_key_value_heads = k.integer("num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads > 0 && c.num_key_value_heads > 0 &&
      c.num_attention_heads % c.num_key_value_heads != 0)
    throw Error(source + ": num_key_value_heads " + std::to_string(c.num_key_value_heads) +
                " does not divide num_attention_heads " + std::to_string(c.num_attention_heads));
  c.head_dim = k.integer("head_dim", 0);
  if (c.head_dim == 0 && c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads != 0)
    throw Error(source + ": num_attention_heads " + std::to_string(c.num_attention_heads) +
                " does not divide hidden_size " + std::to_string(c.hidden_size) +
                " (and no head_dim is given)");
  c.max_position_embeddings = k.integer("max_position_embeddings");
  c.rope_theta = k.number("rope_theta", arch == HfArch::Mixtral ? 1e6 : 10000.0);
  c.rms_norm_eps =
      static_cast<float>(k.number("rms_norm_eps", arch == HfArch::Qwen2Moe ? 1e-6 : 1e-5));
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", false);
}

// Mixtral: every block an MoE layer of top-k softmax routing, no shared expert.
void read_mixtral_keys(const HfKeys& k, MoeConfig& m, ModelConfig& c) {
  // Sliding-window attention equals full attention up to the window: the context stops there.
  if (k.has("sliding_window"))
    c.max_position_embeddings = std::min(c.max_position_embeddings, k.integer("sliding_window"));
  m.num_experts = k.integer("num_local_experts");
  m.moe_intermediate_size = k.integer("intermediate_size");
  m.router_type = RouterType::TopKSoftmax;
  c.intermediate_size = 0;  // no dense block
  c.moe = m;
}

// Qwen2-MoE: q/k/v biases, a gated shared expert, and dense blocks where the config says.
void read_qwen2_moe_keys(const HfKeys& k, MoeConfig& m, ModelConfig& c) {
  if (k.boolean("use_sliding_window", false))
    k.unsupported("use_sliding_window", "sliding-window attention is not supported");
  c.qkv_bias = k.boolean("qkv_bias", true);
  c.intermediate_size = k.integer("intermediate_size");
  m.num_experts = k.integer("num_experts");
  m.moe_intermediate_size = k.integer("moe_intermediate_size");
  m.router_type = RouterType::SoftmaxTopK;
  m.norm_topk_prob = k.boolean("norm_topk_prob", false);
  m.n_shared_experts = 1;
  m.shared_expert_intermediate_size = k.integer("shared_expert_intermediate_size");
  if (m.shared_expert_intermediate_size <= 0)
    k.unsupported("shared_expert_intermediate_size", "must be positive");
  m.shared_expert_gate = true;
  c.moe_layer_freq = k.integer("decoder_sparse_step", 1);
  c.mlp_only_layers = k.integers("mlp_only_layers");
  if (m.num_experts > 0) c.moe = m;  // 0 experts: every block dense, as Qwen2-MoE builds it
}

// OLMoE: q/k RMSNorm and an optional clamp of q/k/v, every block an MoE layer.
void read_olmoe_keys(const HfKeys& k, MoeConfig& m, ModelConfig& c) {
  c.qkv_bias = k.boolean("attention_bias", false);
  c.qk_norm = true;
  if (k.has("clip_qkv")) c.clip_qkv = static_cast<float>(k.number("clip_qkv", 0.0));
  if (k.has("clip_qkv") && !(c.clip_qkv > 0.0f))
    k.unsupported("clip_qkv", "must be positive (or null)");
  m.num_experts = k.integer("num_experts");
  m.moe_intermediate_size = k.integer("intermediate_size");
  m.router_type = RouterType::SoftmaxTopK;
  m.norm_topk_prob = k.boolean("norm_topk_prob", false);
  c.intermediate_size = 0;
  c.moe = m;
}

}  // namespace

bool is_hf_checkpoint(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  if (!in) return false;
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    return j.is_object() && j.contains("model_type");
  } catch (const nlohmann::json::exception&) {
    return false;  // the run-folder loader names the syntax error
  }
}

ModelConfig load_any_model_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path, "config file");
  if (j.is_object() && j.contains("model_type")) return hf_checkpoint_config(j, path).config;
  return load_model_config(path);
}

HfCheckpointConfig hf_checkpoint_config(const nlohmann::json& j, const std::string& source) {
  require(j.is_object(), source + ": not a JSON object");
  const HfKeys k(j, source);
  HfCheckpointConfig out;
  out.model_type = k.text("model_type", "");
  out.arch = hf_arch(out.model_type, source);

  // Features that change the function and that the model does not implement.
  if (k.has("rope_scaling")) k.unsupported("rope_scaling", "scaled RoPE is not supported");
  if (const std::string act = k.text("hidden_act", "silu"); act != "silu")
    k.unsupported("hidden_act", "'" + act + "' is not supported (only silu)");

  ModelConfig& c = out.config;
  read_transformer_keys(k, out.arch, source, c);
  MoeConfig m;
  m.hidden_size = c.hidden_size;
  m.top_k = k.integer("num_experts_per_tok");
  m.capacity_factor = 0.0;              // all three are dropless
  m.aux_loss_type = AuxLossType::None;  // inference: no balancing loss to compute
  m.z_loss_coeff = 0.0f;
  switch (out.arch) {
    case HfArch::Mixtral:
      read_mixtral_keys(k, m, c);
      break;
    case HfArch::Qwen2Moe:
      read_qwen2_moe_keys(k, m, c);
      break;
    case HfArch::Olmoe:
      read_olmoe_keys(k, m, c);
      break;
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
  return out;
}

std::map<std::string, std::string> parse_shard_index(std::string_view text,
                                                     const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": not valid JSON: " + json_error_text(e));
  }
  require(j.is_object(), source + ": not a JSON object");
  require(j.contains("weight_map") && j.at("weight_map").is_object(),
          source + ": needs a \"weight_map\" object (tensor name -> shard file)");
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : j.at("weight_map").items()) {
    const std::string where = source + ": weight_map['" + name + "']";
    require(!name.empty(), source + ": weight_map has an empty tensor name");
    require(file.is_string(), where + " is not a file name (string)");
    const std::string f = file.get<std::string>();
    // Shards sit beside the index: a path elsewhere is refused, not followed.
    require(!f.empty() && f.front() != '.' && f.find_first_of("/\\") == std::string::npos &&
                f.find('\0') == std::string::npos,
            where + " = '" + f + "' is not a plain file name in the checkpoint's folder");
    out.emplace(name, f);
  }
  require(!out.empty(), source + ": weight_map is empty");
  return out;
}

const SafetensorsEntry& HfWeightFiles::entry(const std::string& name) const {
  return headers.at(file_of.at(name)).tensors.at(name);
}

HfWeightFiles open_hf_weights(const std::string& dir) {
  HfWeightFiles w;
  const std::string index_path = dir + "/" + kIndexFile;
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    const std::map<std::string, std::string> index =
        parse_shard_index(read_text_file(index_path), index_path);
    for (const auto& [name, file] : index) {
      const std::string path = dir + "/" + file;
      if (!w.headers.count(path)) {
        if (!fs::is_regular_file(path, ec))
          throw Error(index_path + " names shard '" + file + "', which is missing from " + dir);
        w.headers.emplace(path, read_safetensors_header(path));
      }
      if (!w.headers.at(path).tensors.count(name))
        throw Error(index_path + " places tensor '" + name + "' in '" + file +
                    "', which does not hold it");
      w.file_of.emplace(name, path);
    }
    for (const auto& [path, header] : w.headers)
      for (const auto& [name, entry] : header.tensors) {
        const auto listed = w.file_of.find(name);
        if (listed == w.file_of.end())
          throw Error(path + " holds tensor '" + name + "', which " + kIndexFile +
                      " does not list");
        if (listed->second != path)
          throw Error(path + " holds tensor '" + name + "', which " + kIndexFile + " places in " +
                      listed->second);
      }
    return w;
  }
  const std::string single = dir + "/model.safetensors";
  if (!fs::exists(single, ec)) throw Error(dir + ": no model.safetensors and no " + kIndexFile);
  w.headers.emplace(single, read_safetensors_header(single));
  for (const auto& [name, entry] : w.headers.at(single).tensors) w.file_of.emplace(name, single);
  return w;
}

LoadedModel load_hf_checkpoint(const std::string& dir, uint64_t seed) {
  const std::string config_path = dir + "/config.json";
  const HfCheckpointConfig hf =
      hf_checkpoint_config(read_json_file(config_path, "config file"), config_path);
  HfWeightFiles files = open_hf_weights(dir);

  LoadedModel m;
  m.config = hf.config;
  m.model_type = hf.model_type;
  m.store = std::make_unique<ParamStore>();
  m.model = std::make_unique<Transformer>(m.config, *m.store, seed);
  // The names and shapes the config asks for, before any memory is allocated for them: the
  // files' headers, validated against the files' sizes, bound what the allocation may be.
  std::vector<HfTensorView> views = hf_tensor_views(*m.model, *m.store, HfWhich::Shapes);
  std::set<std::string> expected;
  for (const HfTensorView& v : views) {
    const std::string name = hf_arch_name(v.name, hf.arch);
    expected.insert(name);
    if (!files.file_of.count(name))
      throw Error(dir + ": missing tensor '" + name + "' (shape " + shape_str(v.shape) + ")");
    const SafetensorsEntry& e = files.entry(name);
    if (e.shape != v.shape)
      throw Error(files.file_of.at(name) + ": tensor '" + name + "' has shape " +
                  shape_str(e.shape) + ", config.json needs " + shape_str(v.shape));
  }
  // Left out as transformers leaves them out: RoPE's inverse frequencies (a buffer some
  // checkpoints saved) and a head that tie_word_embeddings replaces by the embedding.
  auto ignored = [&](const std::string& name) {
    return name.ends_with(".rotary_emb.inv_freq") ||
           (m.config.tie_word_embeddings && name == "lm_head.weight");
  };
  for (const auto& [name, path] : files.file_of)
    if (!expected.count(name) && !ignored(name))
      throw Error(path + ": unexpected tensor '" + name +
                  "' (not in the model config.json describes)");

  m.store->allocate(ParamStore::Gradients::No);  // inference only: no gradient buffer
  views = hf_tensor_views(*m.model, *m.store, HfWhich::Values);
  for (const HfTensorView& v : views) {
    const std::string name = hf_arch_name(v.name, hf.arch);
    const std::string& path = files.file_of.at(name);
    read_safetensors_tensor(path, files.headers.at(path), name, v.data);
    if (!all_finite(v.data)) throw Error(path + ": tensor '" + name + "' holds NaN or inf");
  }
  return m;
}

}  // namespace moe
