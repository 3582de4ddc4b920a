#pragma once
// A GGUF file's model, as llama.cpp describes it in the metadata, onto ModelConfig. Three of
// llama.cpp's architectures are MoE transformers that `moe` runs:
//   llama     Mixtral (and dense Llama): ffn_*_exps merged expert tensors when
//             {arch}.expert_count > 0; top-k softmax with the k gates renormalised;
//   qwen2moe  Qwen1.5-MoE / Qwen2-MoE: q/k/v biases, a shared expert with a sigmoid gate,
//             softmax over all experts without renormalising;
//   olmoe     OLMoE: q/k RMSNorm over the whole projection, softmax without renormalising.
// What llama.cpp's converter changed on the way (llama's q/k rows, see GgufArch) is undone by
// the weight source (infer/gguf_weights.h), so the engine sees Hugging Face's layout.
#include <string>

#include "model/config.h"
#include "model/hf_layout.h"
#include "tensor/gguf.h"

namespace moe {

struct GgufModelConfig {
  std::string architecture;       // general.architecture: "llama", "qwen2moe" or "olmoe"
  HfArch arch = HfArch::Mixtral;  // the Hugging Face layout the file was converted from
  // llama.cpp's converter interleaves the halves of each q and k head for `llama` (its RoPE
  // rotates adjacent pairs, Hugging Face's the two halves); the other two keep HF's order.
  bool qk_rows_interleaved = false;
  ModelConfig config;
};

// Throws Error naming the file and the key for an architecture other than the three, a missing
// or mistyped size, and a feature the engine does not implement (RoPE scaling, partial RoPE,
// sliding windows). Integer keys are read whatever integer type the writer chose.
GgufModelConfig gguf_model_config(const GgufHeader& header);

}  // namespace moe
