#pragma once
// `moe quantize`: any model open_model opens (a run folder, a Hugging Face folder, a GGUF file)
// written as a GGUF file that llama.cpp loads and runs, in the layout its converter
// (convert_hf_to_gguf.py) gives each architecture and with llama-quantize's choice of types:
//   - architecture `llama` for Mixtral and for runs of `moe train` (q and k rows interleaved per
//     head for ggml's RoPE, experts merged into ffn_{gate,up,down}_exps), `qwen2moe`, `olmoe`;
//   - the router (ffn_gate_inp), the shared-expert gate, the norms and every 1-D tensor stay
//     F32, whatever the type: the router decides which experts run;
//   - q4_k_m, q5_k_m: llama.cpp's mix (llama-quant.cpp): the output matrix Q6_K, attn_v and
//     ffn_down Q6_K in the layers use_more_bits picks, and with 8 experts attn_v and attn_k
//     Q8_0 and (q4_k_m) attn_output Q5_K. Where rows are not whole blocks, llama.cpp falls back
//     to Q5_0 / Q5_1 / Q8_0, which moe does not read; here every K type falls back to Q8_0,
//     never fewer bits than llama.cpp's choice, and rows that are not whole 32-value blocks
//     to F16, as llama.cpp does.
// A quantized source is dequantized first (each weight as moe reads it), then requantized.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "infer/open_model.h"

namespace moe {

enum class GgufFileType { F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K };

// "f32", "q4_k_m", ... (case-insensitive); nullopt for another name.
std::optional<GgufFileType> parse_gguf_file_type(std::string_view name);
std::string gguf_file_type_names();  // "f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k"

// The llama.cpp architecture that runs `model` as it runs in moe: "llama", "qwen2moe" or
// "olmoe". Throws Error naming `source` and what llama.cpp cannot represent (a router, a
// layout, an attention option) otherwise.
std::string llama_cpp_architecture(const OpenedModel& model, const std::string& source);

struct GgufQuantizeSummary {
  std::string architecture;
  std::map<std::string, int64_t> tensors_by_type;  // ggml's type name -> tensors written
  uint64_t bytes = 0;                              // the file's size
};

// Writes `model` (opened from `source`, whose tokenizer files or GGUF metadata give the
// vocabulary) to `out` as `type`, atomically. Throws Error on anything llama.cpp could not
// run, before the file is created.
GgufQuantizeSummary write_llama_cpp_gguf(const OpenedModel& model, const std::string& source,
                                         GgufFileType type, const std::string& out);

// `model` (a run or a Hugging Face folder) quantized in memory to `type` for moe's own engine:
// each tensor gets the type write_llama_cpp_gguf gives it, and is rounded exactly as it would
// be in that file, so the engine computes what it computes on the file. Dense blocks between
// MoE blocks, which llama.cpp's architectures cannot hold, are included (their MLPs typed as
// llama.cpp types a dense model's), and so are routers llama.cpp cannot run (a sigmoid router's
// bias, expert-choice thresholds: kept f32). F16 tensors are kept as their fp32 values (the engine
// widens F16 to fp32 anyway) and counted at 2 bytes a value. Replaces model.weights and
// model.model; returns the summary, with `bytes` the tensors' bytes as typed and each expert
// counted apart in tensors_by_type (a file merges them). Throws Error for a GGUF file (already
// typed: `moe quantize` writes it as another type).
GgufQuantizeSummary quantize_in_memory(OpenedModel& model, const std::string& source,
                                       GgufFileType type, const InferenceOptions& options);

}  // namespace moe
