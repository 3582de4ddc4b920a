#pragma once
// Mixtral-shaped models made in memory for the bench commands (`--random mixtral-d1024` or
// `mixtral-d512`): the same config and the same normal(0, 0.02) weights wherever they are
// asked for, so every bench measures one model.
#include <cstdint>
#include <string>

#include "infer/weights.h"
#include "model/config.h"

namespace moe::cli {

// Mixtral's architecture at a size this machine holds: 8 layers, 8 experts top-2, GQA 16/8.
// `name`: mixtral-d1024 or mixtral-d512 (anything else is an Error).
ModelConfig random_model_config(const std::string& name);

// The random model's matrices stored as `dtype` says: f32, bf16, or ggml's q8_0, q4_0 or q4_k
// blocks (quantized as llama.cpp's reference quantizer does); routers and norms fp32.
OwnedWeights random_weights(const ModelConfig& c, const std::string& dtype);

// The random model as a checkpoint file in `folder` (written once: a file already there with
// the model's last expert is reused), for the expert cache to read from.
std::string random_checkpoint(const ModelConfig& c, bool bf16, const std::string& folder,
                              const std::string& name);

// Weights a model made in memory holds (values, not bytes).
uint64_t total_parameters(const ModelConfig& c);

}  // namespace moe::cli
