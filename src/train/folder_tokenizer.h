#pragma once
// The tokenizer of a model folder, whichever kind it ships: tokenizer.model (sentencepiece:
// runs of `moe train`, Mixtral) or, where there is none, tokenizer.json (byte-level BPE:
// Qwen2-MoE, OLMoE). One face for the commands that turn text into ids and back.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "train/bpe_tokenizer.h"
#include "train/tokenizer.h"

namespace moe {

class FolderTokenizer {
 public:
  // Throws Error naming the folder when it has neither file, or the file's own error.
  static FolderTokenizer open(const std::string& dir);

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;
  // One id as the vocabulary holds it: a sentencepiece piece as stored (U+2581 starts a word),
  // a byte-level BPE token as its bytes (possibly part of a UTF-8 character).
  std::string piece(int32_t id) const;
  int32_t vocab_size() const;
  int32_t eos_id() const;  // -1 when the tokenizer names none
  // -1 when prompts get none: a tokenizer.json's template (its post-processor) is not applied.
  int32_t bos_id() const;
  bool is_sentencepiece() const { return std::holds_alternative<Tokenizer>(impl_); }

 private:
  explicit FolderTokenizer(std::variant<Tokenizer, BpeTokenizer> impl) : impl_(std::move(impl)) {}
  std::variant<Tokenizer, BpeTokenizer> impl_;
};

}  // namespace moe
