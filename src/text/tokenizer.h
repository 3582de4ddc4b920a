#pragma once
// Tokenizer: a sentencepiece BPE model. Newlines and tabs are kept as the user-defined
// symbols U+21B5 and U+21E5 (sentencepiece treats its input as lines of text), so code and
// manual pages keep their layout through encode and decode. A model without those symbols
// (Mixtral's) gets the text as it is: its byte fallback encodes newlines and tabs its own way.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tensor/error.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe {

struct TokenizerTrainOptions {
  int vocab_size = 4096;
  int threads = 2;
  int64_t max_chunk_bytes = 4000;  // training "sentences": document pieces cut at line ends
  // Beyond this many bytes of text, BPE is learned from every n-th document only: its
  // statistics settle long before, and learning from the whole 60 MB default corpus would cost
  // the default run most of a minute.
  int64_t max_text_bytes = 8'000'000;
};

// The pieces our tokenizers carry newlines and tabs as (user-defined symbols).
inline constexpr std::string_view kNewlineSymbol = "\u21B5";  // ↵
inline constexpr std::string_view kTabSymbol = "\u21E5";      // ⇥

// Tokenizer::train's error when the texts hold too few distinct pieces for the vocabulary.
class VocabularyTooLarge : public Error {
 public:
  VocabularyTooLarge(int64_t requested, int64_t max_pieces);
  int64_t requested, max_pieces;
};

class Tokenizer {
 public:
  // Trains a BPE model on `texts` (every n-th of them when they hold more than
  // options.max_text_bytes) and writes it to model_path (atomically). Throws Error, and
  // VocabularyTooLarge when the texts cannot make options.vocab_size pieces.
  static void train(std::span<const std::string> texts, const TokenizerTrainOptions& options,
                    const std::string& model_path);

  // Loads a model file; throws Error naming the file.
  explicit Tokenizer(const std::string& model_path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;
  int32_t vocab_size() const;
  // The piece of `id` as the model stores it (U+2581 starts a word, U+21B5 is a newline).
  std::string piece(int32_t id) const;
  int32_t eos_id() const;  // ends every document in the token streams
  int32_t bos_id() const;  // -1 when the model has none
  // Whether newlines and tabs travel as the symbols U+21B5 / U+21E5 (our tokenizers).
  bool maps_layout_symbols() const { return layout_symbols_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  bool layout_symbols_ = true;
};

}  // namespace moe
