#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace {

constexpr const char* kWhat = "model config";  // how errors name the object: "<kWhat> field 'x'"

void check(bool ok, const char* field, const std::string& what) {
  if (!ok) throw Error(std::string(kWhat) + " field '" + field + "': " + what);
}

}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  return moe.has_value() && layer >= first_k_dense_replace && (layer + 1) % moe_layer_freq == 0 &&
         std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) == mlp_only_layers.end();
}

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t i = 0; i < num_hidden_layers; ++i) n += is_moe_layer(i);
  return n;
}

void ModelConfig::validate() const {
  // Ranges: generous for any model this code could train or load, tight enough that no
  // product of sizes below (a weight matrix, the parameter count) can overflow int64.
  require_int_in_range(vocab_size, 1, kMaxVocabSize, kWhat, "vocab_size");
  require_int_in_range(hidden_size, 1, kMaxHiddenSize, kWhat, "hidden_size");
  require_int_in_range(intermediate_size, 0, kMaxIntermediateSize, kWhat, "intermediate_size");
  require_int_in_range(num_hidden_layers, 1, kMaxLayers, kWhat, "num_hidden_layers");
  require_int_in_range(num_attention_heads, 1, kMaxHeads, kWhat, "num_attention_heads");
  require_int_in_range(num_key_value_heads, 1, num_attention_heads, kWhat, "num_key_value_heads");
  check(num_attention_heads % num_key_value_heads == 0, "num_key_value_heads",
        "must divide num_attention_heads (" + std::to_string(num_attention_heads) + ")");
  require_int_in_range(head_dim, 0, kMaxHeadDim, kWhat, "head_dim");
  check(head_dim > 0 || hidden_size % num_attention_heads == 0, "hidden_size",
        "must be a multiple of num_attention_heads when head_dim is not given");
  check(resolved_head_dim() <= kMaxHeadDim, "head_dim",
        "hidden_size / num_attention_heads must be at most " + std::to_string(kMaxHeadDim) +
            " (or give head_dim)");
  check(resolved_head_dim() % 2 == 0, "head_dim", "must be even (RoPE rotates pairs)");
  require_int_in_range(max_position_embeddings, 1, kMaxPositions, kWhat, "max_position_embeddings");
  require_real_in_range(rope_theta, 1.0, 1e12, kWhat, "rope_theta", Lower::Exclusive);
  require_real_in_range(rms_norm_eps, 0.0, 1.0, kWhat, "rms_norm_eps", Lower::Exclusive);
  require_real_in_range(initializer_range, 0.0, 1.0, kWhat, "initializer_range", Lower::Exclusive);
  require_int_in_range(moe_layer_freq, 1, kMaxLayers, kWhat, "moe_layer_freq");
  require_int_in_range(first_k_dense_replace, 0, kMaxLayers, kWhat, "first_k_dense_replace");
  for (int64_t layer : mlp_only_layers)
    check(layer >= 0 && layer < num_hidden_layers, "mlp_only_layers",
          "holds " + std::to_string(layer) + ", not a block index in [0, " +
              std::to_string(num_hidden_layers) + ")");
  check(std::isfinite(clip_qkv) && clip_qkv >= 0.0f, "clip_qkv", "must be a number >= 0");
  const bool any_dense = num_moe_layers() < num_hidden_layers;
  check(!any_dense || intermediate_size > 0, "intermediate_size",
        "must be positive: the model has dense FFN blocks");
  if (moe) {
    check(moe->hidden_size == hidden_size, "moe.hidden_size", "must equal hidden_size");
    check(num_moe_layers() > 0, "moe_layer_freq",
          "with first_k_dense_replace leaves no MoE block; drop \"moe\" for a dense model");
    moe->validate();
    check(moe->routing_level == RoutingLevel::Token || moe->route_prefix <= max_position_embeddings,
          "moe.route_prefix",
          "must be at most max_position_embeddings (" + std::to_string(max_position_embeddings) +
              ")");
  }
}

ModelConfig model_config_from_json(const nlohmann::json& j) {
  require(j.is_object(), "model config must be a JSON object");
  ModelConfig c;
  for (const auto& [key, v] : j.items()) {
    if (key == "vocab_size")
      c.vocab_size = json_int(v, kWhat, key);
    else if (key == "hidden_size")
      c.hidden_size = json_int(v, kWhat, key);
    else if (key == "intermediate_size")
      c.intermediate_size = json_int(v, kWhat, key);
    else if (key == "num_hidden_layers")
      c.num_hidden_layers = json_int(v, kWhat, key);
    else if (key == "num_attention_heads")
      c.num_attention_heads = json_int(v, kWhat, key);
    else if (key == "num_key_value_heads")
      c.num_key_value_heads = json_int(v, kWhat, key);
    else if (key == "head_dim")
      c.head_dim = json_int(v, kWhat, key);
    else if (key == "max_position_embeddings")
      c.max_position_embeddings = json_int(v, kWhat, key);
    else if (key == "rope_theta")
      c.rope_theta = json_number(v, kWhat, key);
    else if (key == "rms_norm_eps")
      c.rms_norm_eps = json_float(v, kWhat, key);
    else if (key == "tie_word_embeddings")
      c.tie_word_embeddings = json_bool(v, kWhat, key);
    else if (key == "initializer_range")
      c.initializer_range = json_float(v, kWhat, key);
    else if (key == "moe_layer_freq")
      c.moe_layer_freq = json_int(v, kWhat, key);
    else if (key == "first_k_dense_replace")
      c.first_k_dense_replace = json_int(v, kWhat, key);
    else if (key == "mlp_only_layers") {
      require(v.is_array(),
              "model config field 'mlp_only_layers' must be an array of block indices");
      for (const auto& layer : v) c.mlp_only_layers.push_back(json_int(layer, kWhat, key));
    } else if (key == "moe") {
      require(v.is_object(), "model config field 'moe' must be an object (or absent)");
      nlohmann::json m = v;
      // The MoE layer's width is the model's (keys arrive sorted, so hidden_size is read);
      // a different one given here fails validate().
      if (!m.contains("hidden_size")) m["hidden_size"] = c.hidden_size;
      try {
        c.moe = moe_config_from_json(m);
      } catch (const Error& e) {
        throw Error(std::string("in 'moe': ") + e.what());
      }
    } else
      throw Error("unknown model config field '" + key + "'");
  }
  c.validate();
  return c;
}

nlohmann::json model_config_to_json(const ModelConfig& c) {
  nlohmann::json j = {{"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads},
                      {"num_key_value_heads", c.num_key_value_heads},
                      {"head_dim", c.resolved_head_dim()},
                      {"max_position_embeddings", c.max_position_embeddings},
                      {"rope_theta", c.rope_theta},
                      {"rms_norm_eps", c.rms_norm_eps},
                      {"tie_word_embeddings", c.tie_word_embeddings},
                      {"initializer_range", c.initializer_range},
                      {"moe_layer_freq", c.moe_layer_freq},
                      {"first_k_dense_replace", c.first_k_dense_replace}};
  if (!c.mlp_only_layers.empty()) j["mlp_only_layers"] = c.mlp_only_layers;
  if (c.moe) j["moe"] = moe_config_to_json(*c.moe);
  return j;
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + what + " '" + path + "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {  // syntax, or a number beyond double's range
    throw Error(what + " '" + path + "' is not valid JSON: " + json_error_text(e));
  }
}

ModelConfig load_model_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path, "config file");
  try {
    return model_config_from_json(j);
  } catch (const Error& e) {
    throw Error("config file '" + path + "': " + e.what());
  }
}

}  // namespace moe
