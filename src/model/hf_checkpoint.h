#pragma once
// Hugging Face checkpoint folders (model_type mixtral, qwen2_moe or olmoe) as `moe` models:
//   config.json                        the architecture's keys, mapped onto ModelConfig
//   model.safetensors                  or the shards model.safetensors.index.json lists
// Every tensor's name, dtype and shape is checked against the config before any weight is read;
// the first missing, misshapen, unexpected or non-float tensor is named in the error. Weights in
// F32, F16 or BF16 are converted to fp32 in memory (each tensor read from its file straight into
// the model's storage, no whole-file copy).
//
// The loading goes in three steps so that a later memory-mapped loader can replace the last:
// hf_checkpoint_config (config only), open_hf_weights (headers only: each tensor's file, dtype,
// shape and byte range), then the copy into the model.
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/hf_layout.h"
#include "tensor/safetensors.h"

namespace moe {

struct HfCheckpointConfig {
  HfArch arch = HfArch::Mixtral;
  std::string model_type;  // as config.json spells it
  ModelConfig config;
};

// Whether `dir`/config.json is a Hugging Face config (it has "model_type"); a run folder of
// `moe train` has none. False when the file is missing or unreadable (the loader says why).
bool is_hf_checkpoint(const std::string& dir);

// config.json's keys for its model_type onto ModelConfig. Throws Error naming the key for an
// unknown model_type, a missing or mistyped size, heads that do not divide, or a feature the
// model does not implement (rope_scaling, an activation other than silu, sliding windows that
// bind, Qwen2-MoE without its shared expert). `source` names the file in errors.
HfCheckpointConfig hf_checkpoint_config(const nlohmann::json& j, const std::string& source);

// A model config file of either kind: ours (configs/*.json, a run's config.json) or a Hugging
// Face config.json (it has "model_type"), for the commands that take --config.
ModelConfig load_any_model_config(const std::string& path);

// model.safetensors.index.json's "weight_map": tensor name -> shard file name. Throws Error on
// anything but a JSON object whose weight_map maps names to plain file names in the same folder
// (no path separators, no leading dot).
std::map<std::string, std::string> parse_shard_index(std::string_view text,
                                                     const std::string& source);

// The folder's weight files with only their headers read.
struct HfWeightFiles {
  std::map<std::string, std::string> file_of;                    // tensor name -> path of its file
  std::map<std::string, SafetensorsHeader> headers;              // path -> header
  const SafetensorsEntry& entry(const std::string& name) const;  // name must be in file_of
};

// Reads model.safetensors.index.json and every shard's header, or model.safetensors's. Throws
// Error for a missing or truncated shard, a shard the index names that lacks the tensor, or a
// folder with neither file.
HfWeightFiles open_hf_weights(const std::string& dir);

// The whole folder: config, checks of every tensor, then the weights. LoadedModel.model_type is
// config.json's model_type.
LoadedModel load_hf_checkpoint(const std::string& dir, uint64_t seed = 0);

}  // namespace moe
