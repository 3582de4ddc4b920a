#pragma once
// Opens any model `moe` runs, for inference, as it lies: a run of `moe train` (config.json +
// model.safetensors, whose tensors carry Mixtral's Hugging Face names), a Hugging Face
// checkpoint folder (mixtral, qwen2_moe, olmoe; one file or shards) or a GGUF file (llama.cpp's
// llama, qwen2moe and olmoe; f32, f16, bf16 or quantized). The kind is decided once, here; every
// file is mapped (nothing copied: bf16 stays bf16, quantized blocks stay blocks, and with an
// expert cache the routed experts are not even mapped in) and one InferenceModel runs it.
#include <memory>
#include <string>

#include "infer/inference_model.h"
#include "infer/weights.h"
#include "model/config.h"
#include "tensor/gguf.h"

namespace moe {

enum class ModelKind { Run, HuggingFace, Gguf };

struct OpenedModel {
  ModelKind kind = ModelKind::Run;
  std::string model_type;         // a Hugging Face folder's model_type, a GGUF file's architecture
  HfArch arch = HfArch::Mixtral;  // whose tensor names it uses (a run: Mixtral's)
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;  // before model: the model views it
  const GgufFile* gguf = nullptr;         // a GGUF file's header and tensors (in weights)
  std::unique_ptr<InferenceModel> model;
};

// Throws Error naming the file or tensor for a folder that is neither kind, and for every
// problem the config readers and the InferenceModel find. A run folder's interrupted save is
// the caller's to finish first (recover_for_reading), as it belongs to training.
OpenedModel open_model(const std::string& path, const InferenceOptions& options = {});

// Whether `path` is a file that starts with GGUF's magic (a folder or a missing file is not).
bool is_gguf_file(const std::string& path);

}  // namespace moe
