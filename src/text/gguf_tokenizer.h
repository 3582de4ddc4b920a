#pragma once
// GgufTokenizer: the tokenizer a GGUF file's metadata describes (tokenizer.ggml.*), so that a
// GGUF model needs no other file. It tokenizes as llama.cpp does (src/llama-vocab.cpp), which
// llama.cpp's own test data checks (tests/test_gguf_tokenizer.cpp):
//   - tokenizer.ggml.model "llama": a sentencepiece BPE vocabulary (tokens, scores, token
//     types, <0xXX> byte pieces). The vocabulary becomes a sentencepiece ModelProto (BPE, byte
//     fallback, identity normalizer with the dummy prefix and escaped whitespace) that
//     libsentencepiece runs;
//   - tokenizer.ggml.model "gpt2": a byte-level BPE (tokens, merges) with the pre-tokenizer
//     that tokenizer.ggml.pre names. The vocabulary becomes the equivalent tokenizer.json that
//     BpeTokenizer runs.
// Before either, the text is cut at the tokens that llama.cpp matches literally: user-defined
// tokens always, control tokens ("<s>", "<|im_end|>") when asked (parse_special), the longest
// first. Encoding adds no BOS/EOS unless asked (encode_prompt). Decoding gives the bytes: the
// decode of a sequence's prefix is a prefix of the sequence's decode, so text can be printed
// as it is generated. Immutable once built: encode and decode may run on several threads.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "text/bpe_tokenizer.h"  // SpecialTokens

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe {

class GgufHeader;

// tokenizer.ggml.token_type's values, llama.cpp's numbers (sentencepiece's, plus Undefined).
enum class GgufTokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

// The tokenizer.ggml.pre value this reader (and llama.cpp) gives a byte-level BPE whose
// tokenizer.json pre-tokenizes by `splits` (its Split regexes, in turn) and then ByteLevel
// (byte_level_regex: ByteLevel's own GPT-2 split); nullopt when none of them splits so.
std::optional<std::string> gguf_pre_tokenizer_name(const std::vector<std::string>& splits,
                                                   bool byte_level_regex);

class GgufTokenizer {
 public:
  // Reads the header's tokenizer.ggml.* metadata. Throws Error naming the file and the key on
  // anything missing, mistyped or out of range, and for a model or pre-tokenizer it does not
  // support (naming the ones it does).
  explicit GgufTokenizer(const GgufHeader& header);
  ~GgufTokenizer();
  GgufTokenizer(GgufTokenizer&&) noexcept;
  GgufTokenizer& operator=(GgufTokenizer&&) noexcept;

  // text (UTF-8, else Error) -> ids, without BOS or EOS. parse_special: control tokens written
  // in the text become their ids (llama.cpp's parse_special); otherwise they are plain text.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const;
  // As llama.cpp tokenizes a prompt (add_special and parse_special): BOS first when the file's
  // add_bos_token says so, EOS last when add_eos_token does.
  std::vector<int32_t> encode_prompt(std::string_view text) const;

  // ids -> bytes, as llama.cpp's detokenize without its clean-up of spaces before punctuation
  // (which would break the prefix property above): each token's bytes in turn, the first
  // token's leading space dropped where the encoder adds one (add_space_prefix). Control and
  // unknown tokens give their text with Keep, nothing with Skip. Throws Error for an id
  // outside the vocabulary.
  std::string decode(std::span<const int32_t> ids,
                     SpecialTokens special = SpecialTokens::Keep) const;
  // One token's bytes as decode gives them in the middle of a sequence (Keep).
  const std::string& token_bytes(int32_t id) const;
  // One token's text as the file stores it: U+2581 for a space in a sentencepiece piece, GPT-2's
  // printable code points for the bytes of a byte-level token.
  const std::string& piece(int32_t id) const;
  // As llama.cpp reads it: tokens whose text it takes for an end of turn ("<|im_end|>",
  // "<|eot_id|>", "</s>", ...) are control tokens whatever the file says.
  GgufTokenType token_type(int32_t id) const;
  // Whether generation stops at `id`, as llama.cpp's end-of-generation set has it: EOS and the
  // end-of-turn tokens above (a chat model's turn ends before its EOS).
  bool ends_generation(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 when the file names none
  int32_t eos_id() const { return eos_id_; }  // -1 when the file names none
  bool add_bos() const { return add_bos_; }   // whether encode_prompt starts with BOS
  bool add_eos() const { return add_eos_; }   // whether encode_prompt ends with EOS
  bool is_sentencepiece() const { return sentencepiece_ != nullptr; }  // model "llama"
  const std::string& model() const { return model_; }                  // tokenizer.ggml.model
  const std::string& pre() const { return pre_; }  // the pre-tokenizer used ("gpt2" only)

 private:
  struct Fragment {  // a piece of the text: a token matched literally, or text to tokenize
    int32_t token = -1;
    size_t begin = 0, end = 0;
  };
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
  void check_id(int32_t id) const;

  std::string source_;
  std::string model_, pre_;
  std::vector<std::string> tokens_;
  std::vector<GgufTokenType> types_;
  std::vector<std::string> bytes_;  // token_bytes, per id
  // User-defined, control and unknown tokens, the longest first: llama.cpp's literal matches.
  std::vector<int32_t> literal_tokens_;
  std::vector<int32_t> end_of_generation_;  // sorted
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sentencepiece_;  // model "llama"
  std::unique_ptr<BpeTokenizer> bpe_;                                     // model "gpt2"
};

}  // namespace moe
