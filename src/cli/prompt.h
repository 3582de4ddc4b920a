#pragma once
// The prompt options `generate`, `logits` and `tokenize` share: -p/--prompt TEXT (- reads
// standard input) or -f/--file FILE. The text is checked to be UTF-8 and encoded as the model
// folder says: its tokenizer, and BOS first where a Hugging Face folder's tokenizer adds it.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "infer/open_model.h"
#include "model/config.h"
#include "text/folder_tokenizer.h"

namespace moe::cli {

struct PromptOptions {
  std::string text;  // --prompt; "-" = standard input
  std::string file;  // --file
  CLI::Option* text_option = nullptr;
  CLI::Option* file_option = nullptr;
};

// Adds -p/--prompt and -f/--file (one or the other) to `command`.
void add_prompt_options(CLI::App& command, PromptOptions& prompt);

// Whether either option was given.
bool prompt_given(const PromptOptions& prompt);

// The UTF-8 text of file `path` (named as `option` in errors), its last newline dropped.
std::string read_text_file(const std::string& path, const std::string& option);

// The prompt's text. Throws Error when neither option was given, the file cannot be read, or
// the text is not UTF-8 (naming the byte).
std::string read_prompt(const PromptOptions& prompt);

// The BOS that prompts of model `dir` start with (a GGUF file's as its metadata says, a Hugging
// Face folder's as its tokenizer config says); nullopt when they start with none.
std::optional<int32_t> prompt_bos(const std::string& dir, bool hugging_face,
                                  const FolderTokenizer& tokenizer);

// `text` as model folder `dir`'s ids: BOS first where a Hugging Face folder's tokenizer adds
// it; an empty prompt is end-of-text alone (token 0 for a tokenizer that names none).
std::vector<int32_t> encode_prompt(const std::string& dir, bool hugging_face,
                                   const FolderTokenizer& tokenizer, std::string_view text);

// The tokenizer of any model path: a GGUF file's from its metadata, a folder's from its files.
FolderTokenizer model_tokenizer(const std::string& path);
// The tokenizer of a model open_model already opened from `path`: a GGUF file's from the
// header it mapped, not read again.
FolderTokenizer model_tokenizer(const OpenedModel& model, const std::string& path);

// Throws Error naming `path` when the tokenizer has more pieces than the model has rows.
void require_tokenizer_fits(const FolderTokenizer& tokenizer, const ModelConfig& config,
                            const std::string& path);

// A run folder's interrupted save finished before it is read (as training would on resume);
// nothing for a Hugging Face folder or a GGUF file, which training never writes.
void prepare_for_reading(const std::string& path);

// Refuses in one line (OutOfMemory, exit 2) an inference run of `config` whose KV cache of
// `positions`, prefill of `prompt` tokens, `cached_experts` per MoE layer of `expert_bytes`
// each (0: counted as fp32) and weights made in memory cannot fit in the memory this process
// may use (model/memory_estimate.h).
void require_inference_memory(const ModelConfig& config, int64_t positions, int64_t prompt,
                              int64_t cached_experts, uint64_t expert_bytes,
                              const std::string& what, uint64_t resident_weights = 0);

// The bytes of one expert as `model`'s expert cache holds it (quantized blocks stay blocks);
// 0 without a cache.
uint64_t cached_expert_bytes(const InferenceModel& model);

}  // namespace moe::cli
