#pragma once
// A Hugging Face checkpoint folder opened for inference as it lies: config.json read, every
// safetensors file (or shard) mapped, a Decoder over the mapped weights. Nothing is copied:
// bf16 stays bf16, and with an expert cache the routed experts are not even mapped in.
#include <memory>
#include <string>

#include "infer/decoder.h"
#include "infer/weights.h"
#include "model/hf_checkpoint.h"

namespace moe {

struct MappedModel {
  HfCheckpointConfig checkpoint;              // the architecture and its ModelConfig
  std::unique_ptr<MappedCheckpoint> weights;  // before decoder: the decoder views it
  std::unique_ptr<Decoder> decoder;
};

// Throws Error for a folder that is not a Hugging Face checkpoint (a run of `moe train` is
// exported first: `moe export`), and for every problem open_hf_weights and the Decoder name.
MappedModel open_mapped_model(const std::string& dir, const DecoderOptions& options = {});

}  // namespace moe
