#pragma once
// A run's model as a Hugging Face checkpoint folder that transformers' own model classes read:
//   mixtral    every block MoE, softmax routing renormalised over the top k, no shared experts
//   qwen2_moe  shared experts, dense blocks (decoder_sparse_step, mlp_only_layers), or top-k
//              gates left unnormalised (norm_topk_prob false); also a model with no MoE block
// and otherwise an Error naming the feature Hugging Face has no equivalent for. Only what
// changes inference matters: training-time options (router noise, jitter, balancing losses,
// the training capacity factor) do not stop an export.
//
// Rewrites that keep the function exact where Hugging Face's layout is narrower than ours:
//   routed_scaling_factor  folded into every expert's down projection (w2 / down_proj)
//   ungated shared experts Qwen2-MoE always gates them with sigmoid(x w_g): w_g = 0 gives
//                          exactly 1/2, so their down projection is doubled (exact in floats)
//   no shared experts      (qwen2_moe) one zero shared expert of width 1: it adds exactly 0
//   q/k/v biases           Qwen2-MoE has them (qkv_bias): written as zeros
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "model/config.h"
#include "model/transformer.h"
#include "tensor/params.h"
#include "tensor/safetensors.h"
#include "tensor/tensor.h"

namespace moe {

using HfDtype = StoredDtype;

// The sentencepiece model an export carries, and its special tokens (ids and pieces). The
// caller reads them from the model; this layer only copies the file.
struct HfTokenizer {
  std::string model_path;
  int32_t bos_id = -1, eos_id = -1, unk_id = -1;  // -1 = the tokenizer has none
  std::string bos_piece, eos_piece, unk_piece;
};

struct HfExportOptions {
  HfDtype dtype = HfDtype::F32;
  // A run whose evaluation capacity factor can drop tokens is refused unless this is set:
  // Hugging Face's MoE blocks never drop, so its logits differ wherever ours would drop.
  bool allow_dropless = false;
  bool force = false;  // write into a non-empty folder (replacing the files it writes)
};

// "mixtral" or "qwen2_moe" for `config`; throws Error with one line naming the first feature
// without a Hugging Face equivalent.
std::string hf_model_type(const ModelConfig& config, bool allow_dropless = false);

// config.json for `model_type` (from hf_model_type).
nlohmann::json hf_config_json(const ModelConfig& config, const std::string& model_type,
                              const HfTokenizer& tokenizer, HfDtype dtype);

// Every tensor under the architecture's Hugging Face name (copies, rewritten as described at
// the top of this file).
std::map<std::string, Tensor> hf_export_tensors(Transformer& model, ParamStore& store,
                                                const std::string& model_type);

// Writes config.json, generation_config.json, model.safetensors and, when tokenizer.model_path
// is set, tokenizer.model and tokenizer_config.json into `dir` (created when missing; each
// file atomically, config.json last). Refuses a non-empty `dir` unless options.force. Returns
// the model type written.
std::string export_hf_checkpoint(Transformer& model, ParamStore& store,
                                 const HfTokenizer& tokenizer, const std::string& dir,
                                 const HfExportOptions& options = {});

}  // namespace moe
