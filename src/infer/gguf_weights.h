#pragma once
// A GGUF file's tensors under the Hugging Face names the engine asks for, used in place: the
// file is mapped, each tensor a view of its bytes (ggml's quantized blocks stay blocks). Merged
// expert tensors (blk.N.ffn_gate_exps, [E, F, D]) are viewed one expert at a time. For llama.cpp's
// `llama` architecture, whose converter interleaved each q and k head's two halves, those two
// matrices are copied once with their rows put back in Hugging Face's order (a few percent of
// the model), so that one RoPE serves every model.
#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "infer/weights.h"
#include "model/gguf_config.h"
#include "tensor/gguf.h"

namespace moe {

// llama.cpp's names of a block's tensors (its llama-arch.cpp: blk.N.<gguf>) beside Hugging
// Face's (model.layers.N.<hf>), for every tensor but the router and the routed experts.
struct GgufBlockTensorName {
  std::string_view gguf, hf;
};
const std::vector<GgufBlockTensorName>& gguf_block_tensor_names();
class GgufWeights : public WeightSource {
 public:
  // Names every tensor of `file`; throws Error naming the tensor for one the architecture does
  // not have or whose type no kernel here reads (f32, f16, bf16, q8_0, q4_0, q4_K, q5_K, q6_K).
  GgufWeights(std::unique_ptr<GgufFile> file, const GgufModelConfig& model);

  std::optional<WeightView> find(const std::string& name) const override;
  // Where each tensor (each expert's slice of a merged one) lies in the file, for the expert
  // cache; nullopt for the q and k matrices copied in memory.
  std::optional<TensorLocation> locate(const std::string& name) const override;
  std::string describe() const override { return file_->path(); }
  std::vector<std::string> names() const override;
  const GgufFile& file() const { return *file_; }

 private:
  void add(const GgufTensorInfo& tensor, const GgufModelConfig& model);
  // The view of `tensor` (or of expert e's [F, D] slice of a merged [E, F, D] one) as `name`.
  void add_view(const std::string& name, const GgufTensorInfo& tensor, int64_t expert = -1);
  // q or k rows of `heads` heads from llama.cpp's interleaved order back to Hugging Face's.
  void add_deinterleaved(const std::string& name, const GgufTensorInfo& tensor, int64_t heads);

  std::unique_ptr<GgufFile> file_;
  std::map<std::string, WeightView> views_;
  std::map<std::string, uint64_t> offsets_;        // name -> its first byte in the file
  std::vector<std::vector<std::byte>> reordered_;  // the deinterleaved q and k matrices
};

}  // namespace moe
