#include "text/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cctype>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {
namespace {

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    out.append(text.substr(pos, hit == std::string_view::npos ? hit : hit - pos));
    if (hit == std::string_view::npos) break;
    out.append(to);
    pos = hit + from.size();
  }
  return out;
}

std::string to_model_text(std::string_view text) {
  return replace_all(replace_all(text, "\n", kNewlineSymbol), "\t", kTabSymbol);
}

// Training sentences: each document cut into pieces of at most max_bytes at line ends.
class ChunkIterator : public sentencepiece::SentenceIterator {
 public:
  ChunkIterator(std::span<const std::string_view> texts, int64_t max_bytes)
      : texts_(texts), max_bytes_(max_bytes) {
    advance();
  }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void advance() {
    while (doc_ < texts_.size()) {
      const std::string_view t = texts_[doc_];
      if (pos_ >= t.size()) {
        ++doc_;
        pos_ = 0;
        continue;
      }
      size_t end = std::min(t.size(), pos_ + static_cast<size_t>(max_bytes_));
      if (end < t.size()) {
        const size_t nl = t.rfind('\n', end);
        if (nl != std::string::npos && nl > pos_) end = nl + 1;
      }
      value_ = to_model_text(t.substr(pos_, end - pos_));
      pos_ = end;
      return;
    }
    done_ = true;
  }
  std::span<const std::string_view> texts_;
  int64_t max_bytes_;
  size_t doc_ = 0, pos_ = 0;
  std::string value_;
  bool done_ = false;
};

// A sentencepiece status in words: its messages may start with the source location and the
// failed expression ("./src/sentencepiece_processor.cc(232) [model_proto->ParseFromArray(...)]"),
// which say nothing to a user; `otherwise` stands in when nothing else is left.
std::string status_text(const sentencepiece::util::Status& status, const std::string& otherwise) {
  std::string text(status.message());
  if (text.starts_with("./") || text.find(".cc(") != std::string::npos) {
    const size_t end = text.find("] ");
    text = end == std::string::npos ? "" : text.substr(end + 2);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text.empty() ? otherwise : text;
}

// The number after `marker` in a sentencepiece message, when the message holds `error`; -1
// otherwise.
int64_t number_after(const std::string& message, std::string_view error, std::string_view marker) {
  if (message.find(error) == std::string::npos) return -1;
  const size_t at = message.find(marker);
  if (at == std::string::npos) return -1;
  int64_t value = -1;
  std::from_chars(message.data() + at + marker.size(), message.data() + message.size(), value);
  return value;
}

// "Vocabulary size too high (N). Please set it to a value <= M.": the M.
int64_t max_vocabulary_in(const std::string& message) {
  return number_after(message, "Vocabulary size too high", "set it to a value <= ");
}

// "Vocabulary size is smaller than required_chars. 400 vs 404.": the pieces that every
// character and byte of the texts needs at the least.
int64_t min_vocabulary_in(const std::string& message) {
  return number_after(message, "smaller than required_chars", " vs ");
}

// Every n-th text, n the smallest that keeps them within max_bytes: spread over the whole
// corpus, so that every domain keeps its share.
std::vector<std::string_view> evenly_spaced(std::span<const std::string> texts, int64_t max_bytes) {
  int64_t total = 0;
  for (const std::string& t : texts) total += static_cast<int64_t>(t.size());
  const size_t stride =
      total <= max_bytes ? 1 : static_cast<size_t>((total + max_bytes - 1) / max_bytes);
  std::vector<std::string_view> chosen;
  for (size_t i = 0; i < texts.size(); i += stride) chosen.emplace_back(texts[i]);
  return chosen;
}

}  // namespace

VocabularyTooLarge::VocabularyTooLarge(int64_t requested_pieces, int64_t max)
    : Error("the training texts are too small for a " + std::to_string(requested_pieces) +
            "-piece vocabulary (they make at most " + std::to_string(max) + " pieces)"),
      requested(requested_pieces),
      max_pieces(max) {}

void Tokenizer::train(std::span<const std::string> texts, const TokenizerTrainOptions& o,
                      const std::string& model_path) {
  require(o.vocab_size >= 256, "tokenizer: vocab_size must be at least 256");
  const std::vector<std::string_view> chosen = evenly_spaced(texts, o.max_text_bytes);
  ChunkIterator it(chosen, o.max_chunk_bytes);
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"character_coverage", "0.9995"},
      {"byte_fallback", "true"},  // any byte stays encodable
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},  // indentation is content in code
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"user_defined_symbols", std::string(kNewlineSymbol) + "," + std::string(kTabSymbol)},
      {"max_sentence_length", std::to_string(4 * o.max_chunk_bytes)},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", std::to_string(o.threads)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", "2"}};
  std::string proto;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &proto);
  if (!status.ok()) {
    const int64_t max_pieces = max_vocabulary_in(status.ToString());
    if (max_pieces > 0) throw VocabularyTooLarge(o.vocab_size, max_pieces);
    if (const int64_t min_pieces = min_vocabulary_in(status.ToString()); min_pieces > 0)
      throw Error("a " + std::to_string(o.vocab_size) +
                  "-piece vocabulary is too small for this corpus: its characters, the 256 "
                  "byte pieces and the special tokens need at least " +
                  std::to_string(min_pieces) + "; pass --vocab-size " + std::to_string(min_pieces) +
                  " or more");
    throw Error("tokenizer training failed: " + status_text(status, "no reason given"));
  }
  write_file_atomic(model_path, proto);
}

Tokenizer::Tokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  std::ifstream in(model_path, std::ios::binary);
  if (!in) throw Error("cannot open tokenizer model '" + model_path + "'");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  const auto status = sp_->LoadFromSerializedProto(bytes.str());
  if (!status.ok())
    throw Error(
        "tokenizer model '" + model_path + "' is not a sentencepiece model: " +
        status_text(status, "its bytes do not parse as one (truncated, or another format)"));
  // User-defined symbols score 0 and are neither bytes nor control pieces; a vocabulary that
  // merely contains the character as a learned piece scores it below 0.
  auto user_defined = [&](std::string_view piece) {
    const int id = sp_->PieceToId(piece);
    return id != sp_->unk_id() && !sp_->IsByte(id) && !sp_->IsControl(id) &&
           sp_->GetScore(id) == 0.0f;
  };
  layout_symbols_ = user_defined(kNewlineSymbol) && user_defined(kTabSymbol);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status =
      layout_symbols_ ? sp_->Encode(to_model_text(text), &ids) : sp_->Encode(text, &ids);
  if (!status.ok())
    throw Error("tokenizer: encode failed: " + status_text(status, "no reason given"));
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::vector<int> v(ids.begin(), ids.end());
  for (int& id : v)
    if (id < 0 || id >= sp_->GetPieceSize()) id = sp_->unk_id();
  std::string text;
  const auto status = sp_->Decode(v, &text);
  if (!status.ok())
    throw Error("tokenizer: decode failed: " + status_text(status, "no reason given"));
  if (!layout_symbols_) return text;
  return replace_all(replace_all(text, kNewlineSymbol, "\n"), kTabSymbol, "\t");
}

int32_t Tokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}
std::string Tokenizer::piece(int32_t id) const {
  if (id < 0 || id >= sp_->GetPieceSize())
    throw Error("tokenizer: id " + std::to_string(id) + " is outside the vocabulary");
  return sp_->IdToPiece(id);
}
int32_t Tokenizer::eos_id() const {
  return sp_->eos_id();
}

int32_t Tokenizer::bos_id() const {
  return sp_->bos_id();
}

}  // namespace moe
