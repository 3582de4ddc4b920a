#pragma once
// BpeTokenizer: a Hugging Face tokenizer.json byte-level BPE tokenizer (GPT-2, Qwen2, Llama-3,
// OLMoE and GPT-NeoX ship this form), with the "tokenizers" library's semantics:
//   1. added tokens (special or not) are matched first, leftmost-longest, and split out
//      literally (lstrip / rstrip / single_word honoured); those marked "normalized" are
//      matched after the normalizer;
//   2. the normalizer (NFC, NFD, NFKC, NFKD or a Sequence of them, or none);
//   3. the pre-tokenizer: Split steps (regex or literal, any behaviour) then ByteLevel, which
//      may split by GPT-2's regex itself (use_regex) and may prepend a space;
//   4. each piece's bytes mapped to GPT-2's printable code points, merged by rank, looked up.
// Encoding gives the model's ids only: no post-processor template (no BOS/EOS added).
// Decoding reverses the byte mapping: the result is the bytes as they are, so the decodes of
// consecutive pieces of a sequence concatenate to the decode of the whole (a UTF-8 character
// split across tokens comes out whole once its last byte arrives).
// The regexes run on PCRE2 with \s spelt as Unicode White_Space, as Oniguruma (tokenizers'
// engine) has it; the normalizers are ICU's. A loaded tokenizer is immutable: encode and
// decode may run on several threads at once.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

enum class SpecialTokens { Keep, Skip };

// The ByteLevel decoder: a token's GPT-2 byte-level text back to its bytes, each code point to
// its byte; a token with any other code point (an added token's literal text) stays as it is.
std::string byte_level_bytes(std::string_view token);

// Byte offset of the first ill-formed UTF-8 sequence in `text`, or npos.
size_t invalid_utf8_at(std::string_view text);

class BpeTokenizer {
 public:
  // Reads `tokenizer_json_path` and, when a tokenizer_config.json lies beside it, its
  // eos_token. Throws Error naming the file and the field on any bad input.
  explicit BpeTokenizer(const std::string& tokenizer_json_path);
  // The same from the files' contents; `source` names them in errors. An empty
  // `tokenizer_config_json` means there is none.
  BpeTokenizer(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
               const std::string& source);
  ~BpeTokenizer();
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;

  // text: UTF-8 (else Error). Returns ids in [0, vocab_size()).
  std::vector<int32_t> encode(std::string_view text) const;
  // Throws Error for an id that is not in the vocabulary.
  std::string decode(std::span<const int32_t> ids,
                     SpecialTokens special = SpecialTokens::Keep) const;

  // One past the largest id of the vocabulary and the added tokens.
  int32_t vocab_size() const;
  // tokenizer_config.json's eos_token when given, else the first of <|endoftext|>,
  // <|end_of_text|>, </s> that is a special token here; nullopt when none is.
  std::optional<int32_t> eos_id() const;
  bool is_special(int32_t id) const;  // an added token marked "special"
  // The id of a token (an added token's content, or a vocabulary entry in its byte-mapped
  // form, e.g. "Ġthe"), or nullopt.
  std::optional<int32_t> token_id(std::string_view token) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
