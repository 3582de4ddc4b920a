#pragma once
// ModelConfig: the decoder-only transformer's shape, with Hugging Face's key names
// (Mixtral / Llama / DeepSeek) wherever one exists, plus the MoE layer's options in "moe".
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "moe/config.h"

namespace moe {

// Upper bounds of the size fields (validate() states each range in its error).
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
inline constexpr int64_t kMaxHiddenSize = int64_t{1} << 16;
inline constexpr int64_t kMaxIntermediateSize = int64_t{1} << 20;
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;
inline constexpr int64_t kMaxHeadDim = 1024;
inline constexpr int64_t kMaxPositions = int64_t{1} << 20;

struct ModelConfig {                      // [range accepted by validate()]
  int64_t vocab_size = 4096;              // [1, 2^24]
  int64_t hidden_size = 256;              // D  [1, 2^16]
  int64_t intermediate_size = 688;        // dense SwiGLU blocks' F  [0, 2^20]; > 0 if any dense
  int64_t num_hidden_layers = 6;          // L  [1, 1024]
  int64_t num_attention_heads = 8;        // H  [1, 1024]
  int64_t num_key_value_heads = 4;        // KV (GQA), divides H; = H is plain multi-head
  int64_t head_dim = 0;                   // [0, 1024], even; 0 = hidden_size / H
  int64_t max_position_embeddings = 256;  // longest sequence (RoPE table size)  [1, 2^20]
  double rope_theta = 10000.0;            // (1, 1e12]
  float rms_norm_eps = 1e-5f;             // (0, 1]
  bool tie_word_embeddings = false;
  float initializer_range = 0.02f;  // std of the normal initialisation  (0, 1]
  // Block i (0-based) uses the MoE FFN when moe is set, i >= first_k_dense_replace and
  // (i + 1) % moe_layer_freq == 0: freq 1 = every block (Mixtral), 2 = every other (Switch).
  int64_t moe_layer_freq = 1;         // [1, 1024]
  int64_t first_k_dense_replace = 0;  // [0, 1024]
  // Blocks that stay dense whatever the two rules above say (Qwen2-MoE's mlp_only_layers).
  std::vector<int64_t> mlp_only_layers;  // each in [0, L)
  std::optional<MoeConfig> moe;          // absent = a dense model

  // Attention extras of Hugging Face architectures (set by the checkpoint loader; the config
  // files of `moe train` do not carry them).
  bool qkv_bias = false;  // Qwen2-MoE: biases on the q, k and v projections
  bool qk_norm = false;   // OLMoE: RMSNorm over the whole q and k projections (before RoPE)
  float clip_qkv = 0.0f;  // OLMoE: clamp q, k, v to [-clip_qkv, clip_qkv] after the norms; 0 = off

  int64_t resolved_head_dim() const {
    return head_dim > 0 ? head_dim : hidden_size / num_attention_heads;
  }
  bool is_moe_layer(int64_t layer) const;
  int64_t num_moe_layers() const;
  // Throws moe::Error naming the first inconsistent field.
  void validate() const;
};

// Parses and validates; unknown keys and wrong types are errors naming the key.
ModelConfig model_config_from_json(const nlohmann::json& j);
nlohmann::json model_config_to_json(const ModelConfig& c);
// Reads a JSON file; errors name the file.
ModelConfig load_model_config(const std::string& path);
// Parses a whole JSON file; errors say "<what> '<path>'" (what: "config file", ...).
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace moe
