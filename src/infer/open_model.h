#pragma once
// Opens any model `moe` runs, for inference, as it lies: a run of `moe train` (config.json +
// model.safetensors, whose tensors carry Mixtral's Hugging Face names) or a Hugging Face
// checkpoint folder (mixtral, qwen2_moe, olmoe; one file or shards). The kind is decided once,
// here; every safetensors file is mapped (nothing copied: bf16 stays bf16, and with an expert
// cache the routed experts are not even mapped in) and one InferenceModel runs it.
#include <memory>
#include <string>

#include "infer/inference_model.h"
#include "infer/weights.h"
#include "model/config.h"

namespace moe {

enum class ModelKind { Run, HuggingFace };

struct OpenedModel {
  ModelKind kind = ModelKind::Run;
  std::string model_type;  // a Hugging Face folder's model_type; empty for a run
  ModelConfig config;
  std::unique_ptr<MappedCheckpoint> weights;  // before model: the model views it
  std::unique_ptr<InferenceModel> model;
};

// Throws Error naming the file or tensor for a folder that is neither kind, and for every
// problem the config readers and the InferenceModel find. A run folder's interrupted save is
// the caller's to finish first (recover_for_reading), as it belongs to training.
OpenedModel open_model(const std::string& dir, const InferenceOptions& options = {});

}  // namespace moe
