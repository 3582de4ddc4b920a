#include "cli/prompt.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "infer/open_model.h"
#include "model/config.h"
#include "model/hf_checkpoint.h"
#include "model/memory_estimate.h"
#include "run/checkpoint.h"
#include "tensor/error.h"
#include "tensor/gguf.h"
#include "tensor/threads.h"
#include "text/data.h"

namespace moe::cli {

void add_prompt_options(CLI::App& command, PromptOptions& prompt) {
  prompt.text_option =
      command.add_option("-p,--prompt", prompt.text, "Prompt text; - reads standard input");
  prompt.file_option = command.add_option("-f,--file", prompt.file, "Read the prompt from FILE")
                           ->check(CLI::ExistingFile);
  prompt.text_option->excludes(prompt.file_option);
}

bool prompt_given(const PromptOptions& prompt) {
  return prompt.text_option->count() > 0 || prompt.file_option->count() > 0;
}

std::string read_text_file(const std::string& path, const std::string& option) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + option + " '" + path + "'");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  std::string text = bytes.str();
  // The newline that editors add ends the file; it is not part of the text.
  if (text.ends_with('\n')) text.pop_back();
  require_utf8(text, option + " '" + path + "'");
  return text;
}

std::string read_prompt(const PromptOptions& prompt) {
  if (prompt.file_option->count() > 0) return read_text_file(prompt.file, "--file");
  if (prompt.text_option->count() == 0)
    throw Error("give a prompt: -p TEXT, -p - (standard input) or -f FILE");
  if (prompt.text != "-") {
    require_utf8(prompt.text, "the prompt");
    return prompt.text;
  }
  std::string text(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>{});
  // The newline that `echo` adds ends the input; it is not part of the prompt.
  if (text.ends_with('\n')) text.pop_back();
  require_utf8(text, "the prompt on standard input");
  return text;
}

namespace {

// Whether prompts start with BOS: a Hugging Face folder's sentencepiece tokenizer adds it unless
// tokenizer_config.json says add_bos_token false (as `moe export` writes); our runs never do.
bool prompt_starts_with_bos(const std::string& dir, bool hugging_face, const FolderTokenizer& t) {
  if (!hugging_face || t.bos_id() < 0) return false;
  const std::string path = dir + "/tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return true;
  const nlohmann::json j = read_json_file(path, "tokenizer config");
  if (!j.is_object() || !j.contains("add_bos_token")) return true;
  if (!j.at("add_bos_token").is_boolean())
    throw Error("tokenizer config '" + path + "': add_bos_token must be true or false");
  return j.at("add_bos_token").get<bool>();
}

}  // namespace

std::optional<int32_t> prompt_bos(const std::string& dir, bool hugging_face,
                                  const FolderTokenizer& tokenizer) {
  if (const GgufTokenizer* gguf = tokenizer.gguf())
    return gguf->add_bos() ? std::optional(tokenizer.bos_id()) : std::nullopt;
  if (prompt_starts_with_bos(dir, hugging_face, tokenizer)) return tokenizer.bos_id();
  return std::nullopt;
}

std::vector<int32_t> encode_prompt(const std::string& dir, bool hugging_face,
                                   const FolderTokenizer& tokenizer, std::string_view text) {
  if (const GgufTokenizer* gguf = tokenizer.gguf()) {  // BOS as the file says, as llama.cpp does
    std::vector<int32_t> ids = gguf->encode_prompt(text);
    if (ids.empty()) ids.push_back(std::max(tokenizer.eos_id(), 0));
    return ids;
  }
  std::vector<int32_t> ids = tokenizer.encode(text);
  if (prompt_starts_with_bos(dir, hugging_face, tokenizer))
    ids.insert(ids.begin(), tokenizer.bos_id());
  if (ids.empty()) ids.push_back(std::max(tokenizer.eos_id(), 0));
  return ids;
}

FolderTokenizer model_tokenizer(const std::string& path) {
  if (!is_gguf_file(path)) return FolderTokenizer::open(path);
  const GgufFile file(path);
  return FolderTokenizer::from_gguf(file.header());
}

FolderTokenizer model_tokenizer(const OpenedModel& model, const std::string& path) {
  if (model.gguf) return FolderTokenizer::from_gguf(model.gguf->header());
  return FolderTokenizer::open(path);
}

void require_tokenizer_fits(const FolderTokenizer& tokenizer, const ModelConfig& config,
                            const std::string& path) {
  if (tokenizer.vocab_size() > config.vocab_size)
    throw Error(path + ": the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                " pieces, more than the model's vocab_size " + std::to_string(config.vocab_size));
}

void prepare_for_reading(const std::string& path) {
  if (!is_gguf_file(path) && !is_hf_checkpoint(path)) recover_for_reading(path);
}

void require_inference_memory(const ModelConfig& config, int64_t positions, int64_t prompt,
                              int64_t cached_experts, uint64_t expert_bytes,
                              const std::string& what, uint64_t resident_weights) {
  InferenceShape shape;
  shape.positions = positions;
  shape.prompt = prompt;
  shape.threads = thread_count();
  shape.cached_experts = cached_experts;
  shape.cached_expert_bytes = expert_bytes;
  shape.resident_weights = resident_weights;
  require_memory(estimate_inference_memory(config, shape), what, available_memory(),
                 resident_weights > 0
                     ? "--expert-cache N keeps the experts in a file and N per layer in memory"
                     : "a shorter prompt, fewer tokens or a smaller --expert-cache");
}

uint64_t cached_expert_bytes(const InferenceModel& model) {
  return model.expert_cache() ? model.expert_cache()->slot_bytes() : 0;
}

}  // namespace moe::cli
