#include "infer/gguf_quantize.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "infer/gguf_weights.h"
#include "model/hf_layout.h"
#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/gguf_writer.h"
#include "tensor/quant.h"
#include "text/gguf_tokenizer_metadata.h"

namespace moe {
namespace {

struct FileTypeInfo {
  GgufFileType type;
  std::string_view name;
  uint32_t llama_ftype;  // general.file_type: llama.cpp's LLAMA_FTYPE_* number
  GgmlType base;         // the type of most matrices
};
constexpr FileTypeInfo kFileTypes[] = {
    {GgufFileType::F32, "f32", 0, GgmlType::F32},
    {GgufFileType::F16, "f16", 1, GgmlType::F16},
    {GgufFileType::BF16, "bf16", 32, GgmlType::BF16},
    {GgufFileType::Q8_0, "q8_0", 7, GgmlType::Q8_0},
    {GgufFileType::Q4_0, "q4_0", 2, GgmlType::Q4_0},
    {GgufFileType::Q4_K_M, "q4_k_m", 15, GgmlType::Q4_K},
    {GgufFileType::Q5_K_M, "q5_k_m", 17, GgmlType::Q5_K},
    {GgufFileType::Q6_K, "q6_k", 18, GgmlType::Q6_K},
};
const FileTypeInfo& info_of(GgufFileType type) {
  return *std::find_if(std::begin(kFileTypes), std::end(kFileTypes),
                       [&](const FileTypeInfo& i) { return i.type == type; });
}

// ---- what llama.cpp can run ----

// refuse(what) throws the Error naming what llama.cpp cannot run.
template <typename Refuse>
void check_router(const MoeConfig& m, const std::string& arch, const Refuse& refuse) {
  if (m.router_type == RouterType::SigmoidBias) refuse("the sigmoid router with a selection bias");
  if (m.router_type == RouterType::ExpertChoice) refuse("expert-choice routing");
  if (m.routing_level != RoutingLevel::Token) refuse("sequence-level routing");
  if (m.n_group > 1) refuse("group-limited routing (n_group " + std::to_string(m.n_group) + ")");
  if (m.routed_scaling_factor != 1.0f) refuse("a routed_scaling_factor other than 1");
  if (m.eval_capacity_factor && *m.eval_capacity_factor > 0)
    refuse("an evaluation capacity that drops tokens (eval_capacity_factor)");
  // llama renormalises the k gates (Mixtral); qwen2moe and olmoe never do.
  const bool renormalised = m.router_type != RouterType::SoftmaxTopK || m.norm_topk_prob;
  if (arch == "llama" && !renormalised)
    refuse("top-k gates left unnormalised in architecture llama (norm_topk_prob false)");
  if (arch != "llama" && renormalised)
    refuse("renormalised top-k gates in architecture " + arch + " (norm_topk_prob true)");
}

std::string architecture_of(const OpenedModel& m) {
  if (m.kind == ModelKind::Gguf) return m.model_type;
  if (m.kind == ModelKind::Run || m.model_type == "mixtral") return "llama";
  if (m.model_type == "qwen2_moe") return "qwen2moe";
  return m.model_type;  // olmoe
}

// ---- the tensors, in llama.cpp's names ----

struct PlannedTensor {
  std::string name;                  // llama.cpp's: blk.0.attn_q.weight
  std::vector<std::string> sources;  // Hugging Face's: one, or each expert's in turn
  std::vector<int64_t> dims;         // GGUF's order: dims[0] is the row length
  int64_t layer = -1;                // the block, -1 outside the blocks
  int64_t interleaved_heads = 0;     // > 0: llama's q/k, rows interleaved per head
};

// Every tensor of `model` under its llama.cpp name. A weight that has no place in the
// architecture goes to `unplaced` where one is given; without it, it is an Error (a file may
// leave nothing behind silently).
std::vector<PlannedTensor> plan_tensors(const OpenedModel& model, const std::string& arch,
                                        const std::string& source,
                                        std::vector<std::string>* unplaced = nullptr) {
  const WeightSource& weights = *model.weights;
  const ModelConfig& c = model.config;
  std::vector<PlannedTensor> plan;
  std::set<std::string> used;
  const auto add = [&](std::string name, std::vector<std::string> sources, int64_t layer) {
    const WeightView first = weights.at(sources.front());
    std::vector<int64_t> dims(first.shape.rbegin(), first.shape.rend());
    // Qwen2-MoE's shared-expert gate is [1, D] in Hugging Face's files, [D] in llama.cpp's.
    if (dims.size() == 2 && dims[1] == 1 && name.ends_with("ffn_gate_inp_shexp.weight"))
      dims.pop_back();
    if (sources.size() > 1) dims.push_back(static_cast<int64_t>(sources.size()));
    for (const std::string& s : sources) {
      require(weights.at(s).shape == first.shape,
              source + ": tensor '" + s + "' differs in shape from '" + sources.front() + "'");
      used.insert(s);
    }
    plan.push_back({std::move(name), std::move(sources), std::move(dims), layer, 0});
  };
  add("token_embd.weight", {"model.embed_tokens.weight"}, -1);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string blk = "blk." + std::to_string(l) + ".";
    const std::string hf = "model.layers." + std::to_string(l) + ".";
    for (const GgufBlockTensorName& n : gguf_block_tensor_names()) {
      if (!weights.find(hf + std::string(n.hf))) continue;
      add(blk + std::string(n.gguf), {hf + std::string(n.hf)}, l);
      const bool q = n.gguf == "attn_q.weight", k = n.gguf == "attn_k.weight";
      if (arch == "llama" && (q || k))
        plan.back().interleaved_heads = q ? c.num_attention_heads : c.num_key_value_heads;
    }
    if (!c.is_moe_layer(l)) continue;
    add(blk + "ffn_gate_inp.weight", {router_tensor_name(model.arch, l)}, l);
    for (const auto& [part, matrix] : {std::pair{"gate", ExpertMatrix::Gate},
                                       {"up", ExpertMatrix::Up},
                                       {"down", ExpertMatrix::Down}}) {
      std::vector<std::string> experts;
      for (int64_t e = 0; e < c.moe->num_experts; ++e)
        experts.push_back(expert_tensor_name(model.arch, l, e, matrix));
      add(blk + "ffn_" + std::string(part) + "_exps.weight", std::move(experts), l);
    }
  }
  add("output_norm.weight", {"model.norm.weight"}, -1);
  if (weights.find("lm_head.weight")) add("output.weight", {"lm_head.weight"}, -1);
  for (const std::string& name : weights.names())
    // The noisy router's noise projection only acts in training.
    if (!used.contains(name) && !name.ends_with(".gate.noise_weight")) {
      if (!unplaced)
        throw Error(source + ": tensor '" + name + "' has no place in llama.cpp's " + arch +
                    " architecture");
      unplaced->push_back(name);
    }
  return plan;
}

// ---- the types: llama-quantize's choice (llama-quant.cpp) ----

struct MixFacts {
  int64_t layers = 0;
  int64_t experts = 0;  // llama.cpp's n_expert: 0 for a dense model
  bool tied_embeddings = false;
};

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool more_bits(int64_t layer, int64_t layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

bool quantizable(const PlannedTensor& t) {
  return t.dims.size() >= 2 && t.name.ends_with("weight") && !t.name.ends_with("_norm.weight") &&
         t.name.find("ffn_gate_inp.weight") == std::string::npos;
}

// The type llama.cpp's mix gives `t` before its shape is looked at.
GgmlType mixed_type(const PlannedTensor& t, GgufFileType file, const MixFacts& m) {
  GgmlType type = info_of(file).base;
  const bool k_mix = file == GgufFileType::Q4_K_M || file == GgufFileType::Q5_K_M;
  const bool output =
      t.name == "output.weight" || (m.tied_embeddings && t.name == "token_embd.weight");
  const auto contains = [&](const char* part) { return t.name.find(part) != std::string::npos; };
  if (output) {
    if (t.dims[0] % ggml_type_traits(type).block_size != 0) return GgmlType::Q8_0;
    return type == GgmlType::Q8_0 ? type : GgmlType::Q6_K;
  }
  if (t.name == "token_embd.weight") return type;
  if (contains("attn_v.weight")) {
    if (k_mix && more_bits(t.layer, m.layers)) type = GgmlType::Q6_K;
    if (m.experts == 8) type = GgmlType::Q8_0;
  } else if (contains("attn_k.weight")) {
    if (m.experts == 8) type = GgmlType::Q8_0;
  } else if (contains("attn_output.weight")) {
    if (m.experts == 8 && file == GgufFileType::Q4_K_M) type = GgmlType::Q5_K;
  } else if (contains("ffn_down")) {
    if (k_mix && more_bits(t.layer, m.layers)) type = GgmlType::Q6_K;
  }
  return type;
}

GgmlType tensor_type(const PlannedTensor& t, GgufFileType file, const MixFacts& m) {
  if (!quantizable(t)) return GgmlType::F32;
  const GgmlType base = info_of(file).base;
  if (base == GgmlType::F32 || base == GgmlType::F16 || base == GgmlType::BF16) return base;
  GgmlType type = mixed_type(t, file, m);
  if (t.dims[0] % ggml_type_traits(type).block_size != 0) type = GgmlType::Q8_0;
  if (t.dims[0] % ggml_type_traits(type).block_size != 0) type = GgmlType::F16;
  return type;
}

// ---- the bytes ----

// row (fp32) -> its bytes in `type`, appended to out.
void append_row(GgmlType type, std::span<const float> row, std::vector<uint8_t>& out) {
  const size_t at = out.size();
  const auto n = static_cast<int64_t>(row.size());
  switch (type) {
    case GgmlType::F32:
      out.resize(at + row.size_bytes());
      std::memcpy(out.data() + at, row.data(), row.size_bytes());
      return;
    case GgmlType::F16:
    case GgmlType::BF16: {
      out.resize(at + 2 * row.size());
      for (size_t i = 0; i < row.size(); ++i) {
        const uint16_t bits = type == GgmlType::F16 ? float_to_half(row[i]) : float_to_bf16(row[i]);
        std::memcpy(out.data() + at + 2 * i, &bits, 2);
      }
      return;
    }
    default: {
      const auto quant = static_cast<QuantType>(type);  // the same numbers as ggml's
      out.resize(at + static_cast<size_t>(quant_row_bytes(quant, n)));
      quantize_row(quant, row, std::span(out).subspan(at));
    }
  }
}

// The rows of `t` as llama.cpp lays them out: each source in turn (the experts of a merged
// tensor), llama's q and k rows interleaved per head (Hugging Face's row j * half + i of a
// head is the converter's row 2 i + j).
void produce(const WeightSource& weights, const PlannedTensor& t, GgmlType type,
             std::vector<uint8_t>& out) {
  for (const std::string& name : t.sources) {
    const WeightView v = weights.at(name);
    const int64_t cols = v.shape.back();
    const int64_t rows = v.numel() / cols;
    std::vector<float> row(static_cast<size_t>(cols));
    const int64_t head_dim = t.interleaved_heads > 0 ? rows / t.interleaved_heads : 0;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t from = r;
      if (head_dim > 0) {
        const int64_t head = r / head_dim, within = r % head_dim;
        from = head * head_dim + (within % 2) * (head_dim / 2) + within / 2;
      }
      widen_row(v, from, row);
      append_row(type, row, out);
    }
  }
}

// `v` (stored as `name`) in `out` as `type`, with the values rounded as a file of that type
// holds them; returns the bytes it takes in that type.
uint64_t hold_typed(const WeightView& v, const std::string& name, GgmlType type,
                    OwnedWeights& out) {
  Tensor values(v.shape);
  const int64_t cols = v.shape.back(), rows = v.numel() / cols;
  for (int64_t r = 0; r < rows; ++r)
    widen_row(v, r, values.span().subspan(size_t(r * cols), size_t(cols)));
  const auto count = static_cast<uint64_t>(v.numel());
  switch (type) {
    case GgmlType::F32:
      out.add_f32(name, std::move(values));
      return 4 * count;
    case GgmlType::F16:
      for (float& x : values.span()) x = half_to_float(float_to_half(x));
      out.add_f32(name, std::move(values));
      return 2 * count;
    case GgmlType::BF16: {
      std::vector<uint16_t> bits(count);
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_bf16(values[int64_t(i)]);
      out.add_bf16(name, v.shape, std::move(bits));
      return 2 * count;
    }
    default: {
      const auto quant = static_cast<QuantType>(type);
      out.add_quantized(name, values, quant);
      return static_cast<uint64_t>(rows * quant_row_bytes(quant, cols));
    }
  }
}

MixFacts mix_facts(const OpenedModel& model) {
  MixFacts facts;
  facts.layers = model.config.num_hidden_layers;
  facts.experts = model.config.moe ? model.config.moe->num_experts : 0;
  facts.tied_embeddings = !model.weights->find("lm_head.weight");
  return facts;
}

// ---- the metadata ----

void add_model_metadata(GgufWriter& w, const ModelConfig& c, const std::string& arch,
                        const std::string& name, GgufFileType file) {
  const auto u32 = [](int64_t v) { return gguf_scalar(static_cast<uint32_t>(v)); };
  const auto f32 = [](double v) { return gguf_scalar(static_cast<float>(v)); };
  const auto key = [&](const char* k) { return arch + "." + k; };
  w.set("general.architecture", gguf_scalar(arch));
  w.set("general.name", gguf_scalar(name));
  w.set("general.file_type", u32(info_of(file).llama_ftype));
  w.set("general.quantization_version", u32(2));  // ggml's GGML_QNT_VERSION
  w.set(key("context_length"), u32(c.max_position_embeddings));
  w.set(key("embedding_length"), u32(c.hidden_size));
  w.set(key("block_count"), u32(c.num_hidden_layers));
  w.set(key("attention.head_count"), u32(c.num_attention_heads));
  w.set(key("attention.head_count_kv"), u32(c.num_key_value_heads));
  w.set(key("rope.freq_base"), f32(c.rope_theta));
  w.set(key("attention.layer_norm_rms_epsilon"), f32(c.rms_norm_eps));
  if (arch == "llama") w.set(key("rope.dimension_count"), u32(c.resolved_head_dim()));
  if (!c.moe) {
    w.set(key("feed_forward_length"), u32(c.intermediate_size));
    return;
  }
  const MoeConfig& m = *c.moe;
  w.set(key("expert_count"), u32(m.num_experts));
  w.set(key("expert_used_count"), u32(m.top_k));
  if (arch == "qwen2moe") {
    // The dense width Qwen2-MoE's config carries; llama.cpp reads the experts' own below.
    w.set(key("feed_forward_length"),
          u32(c.intermediate_size > 0 ? c.intermediate_size : m.moe_intermediate_size));
    w.set(key("expert_feed_forward_length"), u32(m.moe_intermediate_size));
    w.set(key("expert_shared_feed_forward_length"), u32(m.shared_expert_intermediate_size));
  } else {
    w.set(key("feed_forward_length"), u32(m.moe_intermediate_size));  // the experts' width
  }
}

std::string model_name(const OpenedModel& model, const std::string& source) {
  if (model.gguf && model.gguf->header().has("general.name"))
    if (const auto* name = std::get_if<std::vector<std::string>>(
            &model.gguf->header().find("general.name")->values))
      return name->front();
  std::filesystem::path p(source);
  if (!p.has_filename()) p = p.parent_path();
  return p.stem().string();
}

}  // namespace

std::optional<GgufFileType> parse_gguf_file_type(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  for (const FileTypeInfo& i : kFileTypes)
    if (i.name == lower) return i.type;
  return std::nullopt;
}

std::string gguf_file_type_names() {
  std::string out;
  for (const FileTypeInfo& i : kFileTypes) out += (out.empty() ? "" : ", ") + std::string(i.name);
  return out;
}

std::string llama_cpp_architecture(const OpenedModel& model, const std::string& source) {
  const std::string arch = architecture_of(model);
  const auto refuse = [&](const std::string& what) {
    throw Error(source + ": llama.cpp's " + arch + " architecture cannot run " + what);
  };
  const ModelConfig& c = model.config;
  if (c.resolved_head_dim() * c.num_attention_heads != c.hidden_size)
    refuse("heads whose widths do not add up to hidden_size (head_dim " +
           std::to_string(c.resolved_head_dim()) + ")");
  const bool every_block_moe = c.moe && c.num_moe_layers() == c.num_hidden_layers;
  if (c.moe && !every_block_moe)
    refuse(
        "dense blocks between MoE blocks (moe_layer_freq, first_k_dense_replace, "
        "mlp_only_layers, decoder_sparse_step)");
  if (arch != "llama" && !c.moe) refuse("a dense model");
  if (c.clip_qkv > 0) refuse("clip_qkv");
  if (arch == "llama" && (c.qkv_bias || c.qk_norm)) refuse("q/k/v biases or q/k norms");
  if (arch == "olmoe" && c.num_key_value_heads != c.num_attention_heads)
    refuse("grouped-query attention (its k norm spans the whole width)");
  if (arch == "olmoe" && !c.qk_norm) refuse("attention without q/k norms");
  if (c.moe) {
    const MoeConfig& m = *c.moe;
    check_router(m, arch, refuse);
    const bool qwen_shared = m.n_shared_experts == 1 && m.shared_expert_gate;
    if (arch == "qwen2moe" && !qwen_shared) refuse("a MoE layer without one gated shared expert");
    if (arch != "qwen2moe" && m.n_shared_experts > 0) refuse("shared experts");
  }
  return arch;
}

GgufQuantizeSummary write_llama_cpp_gguf(const OpenedModel& model, const std::string& source,
                                         GgufFileType type, const std::string& out) {
  GgufQuantizeSummary summary;
  summary.architecture = llama_cpp_architecture(model, source);
  const std::string& arch = summary.architecture;
  const std::vector<PlannedTensor> plan = plan_tensors(model, arch, source);

  GgufWriter w;
  add_model_metadata(w, model.config, arch, model_name(model, source), type);
  if (model.gguf)
    copy_tokenizer_metadata(model.gguf->header(), w);
  else
    add_folder_tokenizer_metadata(
        source,
        model.kind == ModelKind::Run ? TokenizerFolderKind::Run : TokenizerFolderKind::HuggingFace,
        model.config.vocab_size, w);

  const MixFacts facts = mix_facts(model);
  for (const PlannedTensor& t : plan) {
    const GgmlType tensor_type_chosen = tensor_type(t, type, facts);
    ++summary.tensors_by_type[to_string(tensor_type_chosen)];
    const WeightSource* weights = model.weights.get();
    w.add_tensor(t.name, tensor_type_chosen, t.dims,
                 [weights, &t, tensor_type_chosen](std::vector<uint8_t>& bytes) {
                   produce(*weights, t, tensor_type_chosen, bytes);
                 });
  }
  w.write(out);
  std::error_code ec;
  summary.bytes = std::filesystem::file_size(out, ec);
  return summary;
}

GgufQuantizeSummary quantize_in_memory(OpenedModel& model, const std::string& source,
                                       GgufFileType type, const InferenceOptions& options) {
  require(model.kind != ModelKind::Gguf,
          source +
              ": a GGUF file's tensors are already typed; `moe quantize` writes it as "
              "another type");
  GgufQuantizeSummary summary;
  summary.architecture = architecture_of(model);
  const MixFacts facts = mix_facts(model);
  auto quantized = std::make_unique<OwnedWeights>();
  // What no llama.cpp file holds (a sigmoid router's bias, expert-choice thresholds) stays f32.
  std::vector<std::string> unplaced;
  for (const PlannedTensor& t : plan_tensors(model, summary.architecture, source, &unplaced)) {
    const GgmlType chosen = tensor_type(t, type, facts);
    for (const std::string& name : t.sources) {
      ++summary.tensors_by_type[to_string(chosen)];
      summary.bytes += hold_typed(model.weights->at(name), name, chosen, *quantized);
    }
  }
  for (const std::string& name : unplaced) {
    ++summary.tensors_by_type[to_string(GgmlType::F32)];
    summary.bytes += hold_typed(model.weights->at(name), name, GgmlType::F32, *quantized);
  }
  model.model.reset();  // it views the weights replaced next
  model.weights = std::move(quantized);
  model.model = std::make_unique<InferenceModel>(model.config, model.arch, *model.weights, options);
  return summary;
}

}  // namespace moe
