#pragma once
// The tokenizer of a model folder, whichever kind it ships: tokenizer.model (sentencepiece:
// runs of `moe train`, Mixtral) or, where there is none, tokenizer.json (byte-level BPE:
// Qwen2-MoE, OLMoE); or a GGUF file's tokenizer (its tokenizer.ggml.* metadata). One face for
// the commands that turn text into ids and back.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "text/bpe_tokenizer.h"
#include "text/gguf_tokenizer.h"
#include "text/tokenizer.h"

namespace moe {

class GgufHeader;

class FolderTokenizer {
 public:
  // Throws Error naming the folder when it has neither file, or the file's own error.
  static FolderTokenizer open(const std::string& dir);
  // The tokenizer of a GGUF file's metadata (text/gguf_tokenizer.h); throws its Error.
  static FolderTokenizer from_gguf(const GgufHeader& header);

  // A GGUF tokenizer matches control tokens written in the text ("<|im_end|>"), as a
  // tokenizer.json's special added tokens are; no BOS/EOS (see gguf()->encode_prompt).
  std::vector<int32_t> encode(std::string_view text) const;
  // A GGUF tokenizer's control tokens give nothing (llama.cpp's detokenize without special).
  std::string decode(std::span<const int32_t> ids) const;
  // One id as the vocabulary holds it: a sentencepiece piece as stored (U+2581 starts a word),
  // a byte-level BPE token as its bytes (possibly part of a UTF-8 character).
  std::string piece(int32_t id) const;
  int32_t vocab_size() const;
  int32_t eos_id() const;  // -1 when the tokenizer names none
  // -1 when prompts get none: a tokenizer.json's template (its post-processor) is not applied.
  // A GGUF file's BOS whether prompts start with it or not (gguf()->add_bos() says).
  int32_t bos_id() const;
  // Pieces in sentencepiece's form (U+2581 starts a word): tokenizer.model, GGUF "llama".
  bool is_sentencepiece() const;
  // The GGUF tokenizer, for what only it has (encode_prompt, add_bos, parse_special); nullptr
  // for a folder's.
  const GgufTokenizer* gguf() const { return std::get_if<GgufTokenizer>(&impl_); }

 private:
  using Impl = std::variant<Tokenizer, BpeTokenizer, GgufTokenizer>;
  explicit FolderTokenizer(Impl impl) : impl_(std::move(impl)) {}
  Impl impl_;
};

}  // namespace moe
