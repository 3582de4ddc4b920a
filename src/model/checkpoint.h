#pragma once
// Model files: config.json (ModelConfig) and model.safetensors (Hugging Face tensor names,
// hf_layout.h). Loading checks every tensor's presence, shape and values and names the first
// one that is wrong; nothing is half-loaded into a model that is then used.
#include <map>
#include <memory>
#include <string>

#include "model/config.h"
#include "model/transformer.h"
#include "tensor/params.h"
#include "tensor/safetensors.h"

namespace moe {

// A model together with the store that owns its parameters.
struct LoadedModel {
  ModelConfig config;
  std::string model_type;  // a Hugging Face folder's model_type; empty for a run of `moe train`
  std::unique_ptr<ParamStore> store;
  std::unique_ptr<Transformer> model;
};

// Every tensor of the model under its Hugging Face name (copies).
std::map<std::string, Tensor> model_tensors(Transformer& model, ParamStore& store);

// Copies `file`'s tensors into the model; throws Error (naming `source` and the tensor) on a
// missing, extra, misshapen or non-finite tensor. Expert choice's selection thresholds are
// missing from runs written before evaluation routed by them: with `allow_missing_thresholds`
// (resuming, which re-estimates them in training) they stay unset and the count of layers
// without them is returned; otherwise that is an error saying how to get them.
int64_t load_model_tensors(Transformer& model, ParamStore& store, const SafetensorsFile& file,
                           const std::string& source, bool allow_missing_thresholds = false);

void save_model_config(const std::string& dir, const ModelConfig& config);

// Reads <dir>/config.json and <dir>/model.safetensors (or `weights`, when given). A Hugging
// Face folder (config.json with a model_type) loads through load_hf_checkpoint instead.
LoadedModel load_model(const std::string& dir, const std::string& weights = "", uint64_t seed = 0);

}  // namespace moe
