#include "infer/gguf_weights.h"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "model/hf_layout.h"
#include "tensor/error.h"

namespace moe {
namespace {

// The storage of a ggml type the engine reads: a float dtype, or ggml's blocks.
struct Storage {
  TensorDtype dtype = TensorDtype::F32;
  std::optional<QuantType> quant;
};

std::optional<Storage> storage_of(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
      return Storage{TensorDtype::F32, std::nullopt};
    case GgmlType::F16:
      return Storage{TensorDtype::F16, std::nullopt};
    case GgmlType::BF16:
      return Storage{TensorDtype::BF16, std::nullopt};
    case GgmlType::Q8_0:
      return Storage{TensorDtype::F32, QuantType::Q8_0};
    case GgmlType::Q4_0:
      return Storage{TensorDtype::F32, QuantType::Q4_0};
    case GgmlType::Q4_K:
      return Storage{TensorDtype::F32, QuantType::Q4_K};
    case GgmlType::Q5_K:
      return Storage{TensorDtype::F32, QuantType::Q5_K};
    case GgmlType::Q6_K:
      return Storage{TensorDtype::F32, QuantType::Q6_K};
    default:
      return std::nullopt;
  }
}

// "N.rest" -> N and rest; nullopt when the text does not start with a number and a dot.
std::optional<std::pair<int64_t, std::string_view>> leading_index(std::string_view text) {
  const size_t dot = text.find('.');
  if (dot == 0 || dot == std::string_view::npos) return std::nullopt;
  int64_t n = 0;
  for (const char c : text.substr(0, dot)) {
    if (c < '0' || c > '9' || n > 1'000'000) return std::nullopt;
    n = n * 10 + (c - '0');
  }
  return std::make_pair(n, text.substr(dot + 1));
}

}  // namespace

const std::vector<GgufBlockTensorName>& gguf_block_tensor_names() {
  static const std::vector<GgufBlockTensorName> names = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_q_norm.weight", "self_attn.q_norm.weight"},
      {"attn_k_norm.weight", "self_attn.k_norm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},  // a dense block's MLP
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
      {"ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight"},
      {"ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight"},
      {"ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight"},
      {"ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight"},
  };
  return names;
}

GgufWeights::GgufWeights(std::unique_ptr<GgufFile> file, const GgufModelConfig& model)
    : file_(std::move(file)) {
  for (const GgufTensorInfo& tensor : file_->header().tensors()) add(tensor, model);
}

std::optional<WeightView> GgufWeights::find(const std::string& name) const {
  const auto it = views_.find(name);
  if (it == views_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> GgufWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, view] : views_) out.push_back(name);
  return out;
}

// llama.cpp's tensor names (its llama-arch.cpp) onto Hugging Face's, per block.
void GgufWeights::add(const GgufTensorInfo& tensor, const GgufModelConfig& model) {
  const std::string& name = tensor.name;
  const auto unknown = [&] {
    return Error(file_->path() + ": tensor '" + name + "' is not one of the " + model.architecture +
                 " architecture's tensors that moe runs");
  };
  if (name == "token_embd.weight") return add_view("model.embed_tokens.weight", tensor);
  if (name == "output_norm.weight") return add_view("model.norm.weight", tensor);
  if (name == "output.weight") return add_view("lm_head.weight", tensor);
  const std::string_view full = name;
  if (!full.starts_with("blk.")) throw unknown();
  const auto block = leading_index(full.substr(4));
  if (!block) throw unknown();
  // Plain names, not a structured binding: the lambdas below capture them (clang 14 cannot).
  const int64_t layer = block->first;
  const std::string_view rest = block->second;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  const ModelConfig& c = model.config;

  const auto& names = gguf_block_tensor_names();
  const auto named = std::find_if(names.begin(), names.end(),
                                  [&](const GgufBlockTensorName& n) { return n.gguf == rest; });
  if (model.qk_rows_interleaved && (rest == "attn_q.weight" || rest == "attn_k.weight"))
    return add_deinterleaved(
        p + std::string(named->hf), tensor,
        rest == "attn_q.weight" ? c.num_attention_heads : c.num_key_value_heads);
  if (named != names.end()) return add_view(p + std::string(named->hf), tensor);
  if (rest == "ffn_gate_inp.weight") return add_view(router_tensor_name(model.arch, layer), tensor);

  // The routed experts: merged ([E, F, D], one view per expert) or, in files written before
  // llama.cpp merged them, one tensor per expert (blk.N.ffn_gate.E.weight).
  const auto expert_name = [&](std::string_view part, int64_t e) {
    return expert_tensor_name(model.arch, layer, e,
                              part == "gate" ? ExpertMatrix::Gate
                              : part == "up" ? ExpertMatrix::Up
                                             : ExpertMatrix::Down);
  };
  for (const std::string_view part : {"gate", "up", "down"}) {
    if (rest == "ffn_" + std::string(part) + "_exps.weight") {
      require(tensor.dims.size() == 3,
              file_->path() + ": tensor '" + name + "' is not [experts, rows, columns]");
      for (int64_t e = 0; e < tensor.dims[2]; ++e) add_view(expert_name(part, e), tensor, e);
      return;
    }
    const std::string legacy = "ffn_" + std::string(part) + ".";
    if (rest.starts_with(legacy) && rest.ends_with(".weight"))
      if (const auto expert = leading_index(rest.substr(legacy.size()));
          expert && expert->second == "weight")
        return add_view(expert_name(part, expert->first), tensor);
  }
  throw unknown();
}

void GgufWeights::add_view(const std::string& name, const GgufTensorInfo& tensor, int64_t expert) {
  const std::optional<Storage> storage = storage_of(tensor.type);
  require(storage.has_value(), file_->path() + ": tensor '" + tensor.name + "' is " +
                                   to_string(tensor.type) +
                                   ": moe reads f32, f16, bf16, q8_0, q4_0, q4_K, q5_K and q6_K");
  // GGUF lists dims fastest first; Hugging Face's shapes are row-major.
  Shape shape(tensor.dims.rbegin(), tensor.dims.rend());
  const std::byte* data = file_->data(tensor).data();
  if (expert >= 0) {
    const uint64_t per_expert = tensor.bytes / static_cast<uint64_t>(tensor.dims[2]);
    data += per_expert * static_cast<uint64_t>(expert);
    shape.erase(shape.begin());
  }
  // A 1-D gate for a [1, D] Hugging Face tensor (Qwen2-MoE's shared-expert gate).
  if (name.ends_with("shared_expert_gate.weight") && shape.size() == 1)
    shape.insert(shape.begin(), 1);
  WeightView view{storage->dtype, std::move(shape), data, storage->quant};
  require(views_.emplace(name, view).second,
          file_->path() + ": two tensors are named '" + name + "' in Hugging Face's layout");
  offsets_[name] = file_->header().data_start() +
                   static_cast<uint64_t>(data - file_->data(tensor).data()) + tensor.offset;
}

void GgufWeights::add_deinterleaved(const std::string& name, const GgufTensorInfo& tensor,
                                    int64_t heads) {
  add_view(name, tensor);
  WeightView& view = views_.at(name);
  const int64_t rows = view.shape.at(0);
  require(view.shape.size() == 2 && heads > 0 && rows % heads == 0 && rows / heads % 2 == 0,
          file_->path() + ": tensor '" + tensor.name + "' does not hold " + std::to_string(heads) +
              " heads of an even width");
  const int64_t head_dim = rows / heads, half = head_dim / 2;
  const auto row_bytes = static_cast<size_t>(view.bytes() / rows);
  std::vector<std::byte>& copy = reordered_.emplace_back(static_cast<size_t>(view.bytes()));
  // Hugging Face's row j * half + i of a head is the converter's row 2 i + j.
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < half; ++i)
        std::memcpy(copy.data() + size_t(h * head_dim + j * half + i) * row_bytes,
                    view.data + size_t(h * head_dim + 2 * i + j) * row_bytes, row_bytes);
  view.data = copy.data();
  offsets_.erase(name);  // no longer the file's bytes
}

std::optional<TensorLocation> GgufWeights::locate(const std::string& name) const {
  const auto at = offsets_.find(name);
  if (at == offsets_.end()) return std::nullopt;
  const WeightView& v = views_.at(name);
  return TensorLocation{file_->path(), at->second, static_cast<uint64_t>(v.bytes()),
                        v.dtype,       v.shape,    v.quant};
}

}  // namespace moe
