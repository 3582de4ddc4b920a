#include "model/gguf_config.h"

#include <limits>
#include <type_traits>
#include <variant>

#include "tensor/error.h"

namespace moe {
namespace {

// The metadata of one architecture: "{arch}.key" read as llama.cpp reads it.
class ArchKeys {
 public:
  ArchKeys(const GgufHeader& header, std::string arch) : header_(header), arch_(std::move(arch)) {}

  std::string key(const std::string& name) const { return arch_ + "." + name; }
  bool has(const std::string& name) const { return header_.has(key(name)); }

  // A scalar of any integer type (writers differ: gguf-py writes u32, others u64 or i32).
  int64_t integer(const std::string& name) const {
    const GgufValue* value = header_.find(key(name));
    require(value != nullptr, where(name) + " is missing");
    require(!value->is_array, where(name) + " is an array, not one integer");
    return std::visit(
        [&](const auto& elements) -> int64_t {
          using Elements = std::decay_t<decltype(elements)>;
          if constexpr (std::is_same_v<Elements, std::monostate>) {
            throw Error(where(name) + " is " + value->type_name() + ", not an integer");
          } else if constexpr (std::is_integral_v<typename Elements::value_type> &&
                               !std::is_same_v<typename Elements::value_type, bool>) {
            using T = typename Elements::value_type;
            if constexpr (std::is_unsigned_v<T>)
              require(elements.front() <= uint64_t(std::numeric_limits<int64_t>::max()),
                      where(name) + " is too large");
            return static_cast<int64_t>(elements.front());
          } else {
            throw Error(where(name) + " is " + value->type_name() + ", not an integer");
          }
        },
        value->values);
  }
  int64_t integer(const std::string& name, int64_t fallback) const {
    return has(name) ? integer(name) : fallback;
  }
  double number(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const GgufValue* value = header_.find(key(name));
    if (const auto* f32 = std::get_if<std::vector<float>>(&value->values); f32 && !value->is_array)
      return f32->front();
    if (const auto* f64 = std::get_if<std::vector<double>>(&value->values); f64 && !value->is_array)
      return f64->front();
    throw Error(where(name) + " is " + value->type_name() + ", not a number");
  }
  [[noreturn]] void unsupported(const std::string& name, const std::string& why) const {
    throw Error(where(name) + ": " + why);
  }
  std::string where(const std::string& name) const {
    return header_.source() + ": metadata '" + key(name) + "'";
  }

 private:
  const GgufHeader& header_;
  std::string arch_;
};

// general.architecture onto the Hugging Face architecture whose function it is.
void read_architecture(const GgufHeader& header, GgufModelConfig& out) {
  out.architecture = header.get<std::string>("general.architecture");
  const std::string& a = out.architecture;
  if (a == "llama") {
    out.arch = HfArch::Mixtral;
    out.qk_rows_interleaved = true;
  } else if (a == "qwen2moe") {
    out.arch = HfArch::Qwen2Moe;
  } else if (a == "olmoe") {
    out.arch = HfArch::Olmoe;
  } else {
    throw Error(header.source() + ": general.architecture '" + a +
                "' is not supported (supported: llama, qwen2moe, olmoe)");
  }
}

// What changes the function and the engine does not implement.
void refuse_unsupported(const GgufHeader& header, const ArchKeys& k) {
  if (k.has("rope.scaling.type")) {
    const std::string type = header.get<std::string>(k.key("rope.scaling.type"));
    if (type != "none") k.unsupported("rope.scaling.type", "scaled RoPE is not supported");
  }
  if (k.number("rope.scaling.factor", 1.0) != 1.0 && k.number("rope.scaling.factor", 0.0) != 0.0)
    k.unsupported("rope.scaling.factor", "scaled RoPE is not supported");
  if (k.has("attention.sliding_window"))
    k.unsupported("attention.sliding_window", "sliding-window attention is not supported");
  if (header.find_tensor("rope_freqs.weight"))
    throw Error(header.source() + ": tensor 'rope_freqs.weight' (RoPE frequency factors) is " +
                "not supported");
}

// Sizes, attention and RoPE, from the metadata and from which tensors the file holds.
void read_transformer_config(const GgufHeader& header, const ArchKeys& k, ModelConfig& c) {
  const GgufTensorInfo& embedding = header.tensor("token_embd.weight");
  require(embedding.dims.size() == 2,
          header.source() + ": tensor 'token_embd.weight' is not a matrix");
  c.hidden_size = k.integer("embedding_length");
  c.vocab_size = embedding.dims[1];
  require(embedding.dims[0] == c.hidden_size,
          header.source() + ": tensor 'token_embd.weight' has rows of " +
              std::to_string(embedding.dims[0]) + " values, but " + k.key("embedding_length") +
              " is " + std::to_string(c.hidden_size));
  c.num_hidden_layers = k.integer("block_count");
  c.num_attention_heads = k.integer("attention.head_count");
  c.num_key_value_heads = k.integer("attention.head_count_kv", c.num_attention_heads);
  c.max_position_embeddings = k.integer("context_length");
  c.rope_theta = k.number("rope.freq_base", 10000.0);
  c.rms_norm_eps = static_cast<float>(k.number("attention.layer_norm_rms_epsilon", 1e-5));
  if (k.has("attention.key_length")) c.head_dim = k.integer("attention.key_length");
  const int64_t head_dim = c.head_dim > 0              ? c.head_dim
                           : c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads
                                                       : 0;
  if (k.integer("attention.value_length", head_dim) != head_dim)
    k.unsupported("attention.value_length", "values of another width than keys");
  if (k.integer("rope.dimension_count", head_dim) != head_dim)
    k.unsupported("rope.dimension_count", "RoPE over part of each head is not supported");
  // llama.cpp ties the head to the embedding when the file has no output.weight.
  c.tie_word_embeddings = header.find_tensor("output.weight") == nullptr;
  c.qkv_bias = header.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.qk_norm = header.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  c.clip_qkv = static_cast<float>(k.number("attention.clamp_kqv", 0.0));
}

// The MoE layer of `experts` experts, routed as llama.cpp routes the architecture.
MoeConfig read_moe_config(const ArchKeys& k, HfArch arch, int64_t experts, const ModelConfig& c) {
  MoeConfig m;
  m.hidden_size = c.hidden_size;
  m.num_experts = experts;
  m.top_k = k.integer("expert_used_count");
  m.capacity_factor = 0.0;  // dropless, as llama.cpp runs every model
  m.aux_loss_type = AuxLossType::None;
  m.z_loss_coeff = 0.0f;
  m.moe_intermediate_size = k.integer("expert_feed_forward_length", c.intermediate_size);
  if (arch == HfArch::Mixtral) {
    m.router_type = RouterType::TopKSoftmax;  // softmax, top-k, gates renormalised
  } else {
    m.router_type = RouterType::SoftmaxTopK;
    m.norm_topk_prob = false;  // llama.cpp's qwen2moe and olmoe never renormalise
  }
  if (arch == HfArch::Qwen2Moe) {
    m.n_shared_experts = 1;
    m.shared_expert_intermediate_size =
        k.integer("expert_shared_feed_forward_length", c.intermediate_size);
    m.shared_expert_gate = true;
  }
  return m;
}

}  // namespace

GgufModelConfig gguf_model_config(const GgufHeader& header) {
  GgufModelConfig out;
  read_architecture(header, out);
  const ArchKeys k(header, out.architecture);
  refuse_unsupported(header, k);
  ModelConfig& c = out.config;
  read_transformer_config(header, k, c);
  const int64_t experts = k.integer("expert_count", 0);
  c.intermediate_size = k.integer("feed_forward_length", 0);
  if (experts > 0) {
    c.moe = read_moe_config(k, out.arch, experts, c);
    if (out.arch != HfArch::Qwen2Moe) c.intermediate_size = 0;  // no dense block
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(header.source() + ": " + e.what());
  }
  return out;
}

}  // namespace moe
