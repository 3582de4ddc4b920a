#include "text/gguf_tokenizer_metadata.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <bit>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "tensor/error.h"
#include "tensor/gguf.h"
#include "tensor/gguf_writer.h"
#include "text/gguf_tokenizer.h"
#include "text/tokenizer.h"

namespace moe {
namespace {

using nlohmann::json;

// ---- tokenizer.model: the pieces of a sentencepiece ModelProto ----

// Reads the protocol-buffer fields of one message: a key (field << 3 | wire type) as a varint,
// then the value. Only the wire types a ModelProto uses: varint, 64-bit, length, 32-bit.
class ProtoReader {
 public:
  ProtoReader(std::string_view bytes, const std::string& source) : in_(bytes), source_(source) {}

  bool next() {
    if (in_.empty()) return false;
    const uint64_t key = varint();
    field_ = static_cast<uint32_t>(key >> 3);
    wire_type_ = static_cast<uint32_t>(key & 7);
    return true;
  }
  uint32_t field() const { return field_; }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const auto byte = static_cast<uint8_t>(take(1).front());
      value |= uint64_t{byte & 0x7Fu} << shift;
      if (!(byte & 0x80)) return value;
    }
    fail("a varint longer than 10 bytes");
  }
  float fixed32_float() {
    require_wire_type(5);
    uint32_t bits = 0;
    const std::string_view b = take(4);
    for (int i = 3; i >= 0; --i) bits = bits << 8 | static_cast<uint8_t>(b[i]);
    return std::bit_cast<float>(bits);
  }
  std::string_view length_delimited() {
    require_wire_type(2);
    return take(varint());
  }
  void skip() {
    switch (wire_type_) {
      case 0:
        varint();
        return;
      case 1:
        take(8);
        return;
      case 2:
        take(varint());
        return;
      case 5:
        take(4);
        return;
      default:
        fail("wire type " + std::to_string(wire_type_));
    }
  }

 private:
  void require_wire_type(uint32_t type) {
    if (wire_type_ != type) fail("field " + std::to_string(field_) + " of an unexpected type");
  }
  std::string_view take(uint64_t n) {
    if (n > in_.size()) fail("a field runs past the end");
    const std::string_view out = in_.substr(0, n);
    in_.remove_prefix(n);
    return out;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(source_ + ": not a sentencepiece model (" + what + ")");
  }

  std::string_view in_;
  const std::string& source_;
  uint32_t field_ = 0, wire_type_ = 0;
};

// Field numbers from sentencepiece's src/sentencepiece_model.proto.
constexpr uint32_t kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3;
constexpr uint32_t kPiecePiece = 1, kPieceScore = 2, kPieceType = 3;
constexpr uint32_t kTrainerModelType = 3, kModelTypeBpe = 2;
constexpr uint32_t kNormalizerAddDummyPrefix = 3;

struct SentencePieceVocabulary {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;  // sentencepiece's piece types, which GGUF's token types copy
  uint64_t model_type = 1;     // sentencepiece's default: unigram
  bool add_dummy_prefix = true;
};

SentencePieceVocabulary read_sentencepiece(std::string_view proto, const std::string& source) {
  SentencePieceVocabulary v;
  ProtoReader model(proto, source);
  while (model.next()) {
    if (model.field() == kModelPieces) {
      ProtoReader piece(model.length_delimited(), source);
      std::string text;
      float score = 0;
      uint64_t type = 1;  // normal
      while (piece.next()) {
        if (piece.field() == kPiecePiece)
          text = piece.length_delimited();
        else if (piece.field() == kPieceScore)
          score = piece.fixed32_float();
        else if (piece.field() == kPieceType)
          type = piece.varint();
        else
          piece.skip();
      }
      v.pieces.push_back(std::move(text));
      v.scores.push_back(score);
      v.types.push_back(static_cast<int32_t>(type));
    } else if (model.field() == kModelTrainerSpec || model.field() == kModelNormalizerSpec) {
      const bool trainer = model.field() == kModelTrainerSpec;
      ProtoReader spec(model.length_delimited(), source);
      while (spec.next()) {
        if (trainer && spec.field() == kTrainerModelType)
          v.model_type = spec.varint();
        else if (!trainer && spec.field() == kNormalizerAddDummyPrefix)
          v.add_dummy_prefix = spec.varint() != 0;
        else
          spec.skip();
      }
    } else {
      model.skip();
    }
  }
  return v;
}

std::optional<json> read_optional_json(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  std::ifstream in(path);
  json j = json::parse(in, nullptr, false);
  require(!j.is_discarded(), path + ": not valid JSON");
  return j;
}

// tokenizer_config.json's flag `key`, or `fallback` when it says nothing.
bool config_flag(const std::optional<json>& config, const char* key, bool fallback) {
  if (config && config->contains(key) && (*config)[key].is_boolean()) return (*config)[key];
  return fallback;
}

// Tokens past the tokenizer's last, up to the embedding's rows: unused placeholders.
void pad_vocabulary(std::vector<std::string>& tokens, std::vector<int32_t>& types,
                    int64_t vocab_size, const std::string& source) {
  require(static_cast<int64_t>(tokens.size()) <= vocab_size,
          source + " has " + std::to_string(tokens.size()) + " tokens, more than the model's " +
              std::to_string(vocab_size) + " embedding rows");
  while (static_cast<int64_t>(tokens.size()) < vocab_size) {
    tokens.push_back("[PAD" + std::to_string(tokens.size()) + "]");
    types.push_back(static_cast<int32_t>(GgufTokenType::Unused));
  }
}

// Where the model's Tokenizer carries newlines and tabs as its own pieces (text/tokenizer.h),
// swapping them for the characters before encoding, the file names those pieces by the
// characters themselves, since llama.cpp swaps nothing: a newline then becomes the token the
// model was trained on, not a byte. They are written as normal pieces: llama.cpp cuts the text
// at user-defined pieces and gives each following fragment a space prefix, which the model's
// tokenizer never did after a newline.
void name_layout_symbols_as_characters(const std::string& path, SentencePieceVocabulary& v) {
  if (!Tokenizer(path).maps_layout_symbols()) return;  // Mixtral's: newlines and tabs are bytes
  for (const auto& [symbol, character] :
       {std::pair{kNewlineSymbol, "\n"}, std::pair{kTabSymbol, "\t"}}) {
    const auto at =
        static_cast<size_t>(std::find(v.pieces.begin(), v.pieces.end(), symbol) - v.pieces.begin());
    v.pieces.at(at) = character;
    v.types.at(at) = static_cast<int32_t>(GgufTokenType::Normal);
  }
}

void add_sentencepiece(const std::string& path, TokenizerFolderKind kind,
                       const std::optional<json>& config, int64_t vocab_size, GgufWriter& out) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(path);
  require(status.ok(), path + ": cannot load: " + status.ToString());
  SentencePieceVocabulary v = read_sentencepiece(sp.serialized_model_proto(), path);
  require(v.model_type == kModelTypeBpe,
          path +
              ": a sentencepiece model that is not BPE; llama.cpp's 'llama' vocabulary "
              "merges pieces as BPE does");
  name_layout_symbols_as_characters(path, v);
  pad_vocabulary(v.pieces, v.types, vocab_size, path);
  v.scores.resize(v.pieces.size(), -1000.0f);  // the padding, never chosen
  out.set("tokenizer.ggml.model", gguf_scalar<std::string>("llama"));
  out.set("tokenizer.ggml.tokens", gguf_array(std::move(v.pieces)));
  out.set("tokenizer.ggml.scores", gguf_array(std::move(v.scores)));
  out.set("tokenizer.ggml.token_type", gguf_array(std::move(v.types)));
  const auto set_id = [&](const char* key, int id) {
    if (id >= 0) out.set(key, gguf_scalar(static_cast<uint32_t>(id)));
  };
  set_id("tokenizer.ggml.unknown_token_id", sp.unk_id());
  set_id("tokenizer.ggml.bos_token_id", sp.bos_id());
  set_id("tokenizer.ggml.eos_token_id", sp.eos_id());
  set_id("tokenizer.ggml.padding_token_id", sp.pad_id());
  const bool bos_by_default = kind == TokenizerFolderKind::HuggingFace && sp.bos_id() >= 0;
  out.set("tokenizer.ggml.add_bos_token",
          gguf_scalar(config_flag(config, "add_bos_token", bos_by_default)));
  out.set("tokenizer.ggml.add_eos_token", gguf_scalar(config_flag(config, "add_eos_token", false)));
  out.set("tokenizer.ggml.add_space_prefix", gguf_scalar(v.add_dummy_prefix));
}

// ---- tokenizer.json: a byte-level BPE ----

// Its pre-tokenizer's Split regexes and whether ByteLevel splits by GPT-2's regex too; throws
// for a pre-tokenizer that is not byte-level.
std::string pre_tokenizer_name(const json& pre, const std::string& source) {
  std::vector<std::string> splits;
  std::optional<bool> byte_level_regex;
  const auto take = [&](const json& step) {
    const std::string type = step.value("type", "");
    if (type == "Split" && step.contains("pattern") && step["pattern"].contains("Regex"))
      splits.push_back(step["pattern"]["Regex"].get<std::string>());
    else if (type == "ByteLevel")
      byte_level_regex = step.value("use_regex", true);
    else
      throw Error(source + ": pre-tokenizer step '" + type +
                  "' is not one llama.cpp's byte-level BPE names");
  };
  if (pre.is_object() && pre.value("type", "") == "Sequence")
    for (const json& step : pre.at("pretokenizers")) take(step);
  else if (pre.is_object())
    take(pre);
  require(byte_level_regex.has_value(), source + ": not a byte-level BPE (no ByteLevel step)");
  const auto name = gguf_pre_tokenizer_name(splits, *byte_level_regex);
  require(name.has_value(), source +
                                ": its pre-tokenizer's rules are not one of llama.cpp's that moe "
                                "knows (gpt-2, qwen2, llama-bpe)");
  return *name;
}

// A special token of tokenizer_config.json ("<s>" or {"content": "<s>"}) as its id, if any.
std::optional<uint32_t> special_token_id(const std::optional<json>& config, const char* key,
                                         const std::vector<std::string>& tokens) {
  if (!config || !config->contains(key)) return std::nullopt;
  const json& value = (*config)[key];
  std::string text;
  if (value.is_string())
    text = value;
  else if (value.is_object() && value.contains("content") && value["content"].is_string())
    text = value["content"];
  else
    return std::nullopt;
  for (size_t id = 0; id < tokens.size(); ++id)
    if (tokens[id] == text) return static_cast<uint32_t>(id);
  return std::nullopt;
}

void add_byte_level_bpe(const std::string& path, const std::optional<json>& config,
                        int64_t vocab_size, GgufWriter& out) {
  const std::optional<json> tokenizer = read_optional_json(path);
  const json& model = tokenizer->at("model");
  require(model.value("type", "") == "BPE", path + ": model.type is not BPE");
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  const auto place = [&](int64_t id, const std::string& text, GgufTokenType type) {
    require(id >= 0 && id < vocab_size, path + ": token '" + text + "' has id " +
                                            std::to_string(id) + ", outside the model's " +
                                            std::to_string(vocab_size) + " embedding rows");
    if (static_cast<int64_t>(tokens.size()) <= id) {
      tokens.resize(id + 1);
      types.resize(id + 1, static_cast<int32_t>(GgufTokenType::Unused));
    }
    tokens[id] = text;
    types[id] = static_cast<int32_t>(type);
  };
  for (const auto& [text, id] : model.at("vocab").items())
    place(id.get<int64_t>(), text, GgufTokenType::Normal);
  if (tokenizer->contains("added_tokens"))
    for (const json& added : (*tokenizer)["added_tokens"])
      place(added.at("id").get<int64_t>(), added.at("content").get<std::string>(),
            added.value("special", false) ? GgufTokenType::Control : GgufTokenType::UserDefined);
  for (size_t id = 0; id < tokens.size(); ++id)
    if (tokens[id].empty()) tokens[id] = "[PAD" + std::to_string(id) + "]";  // a gap in the ids
  pad_vocabulary(tokens, types, vocab_size, path);

  std::vector<std::string> merges;
  for (const json& merge : model.value("merges", json::array()))
    merges.push_back(merge.is_string()
                         ? merge.get<std::string>()
                         : merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>());
  out.set("tokenizer.ggml.model", gguf_scalar<std::string>("gpt2"));
  out.set("tokenizer.ggml.pre",
          gguf_scalar(pre_tokenizer_name(tokenizer->value("pre_tokenizer", json()), path)));
  const std::optional<uint32_t> bos = special_token_id(config, "bos_token", tokens);
  const std::optional<uint32_t> eos = special_token_id(config, "eos_token", tokens);
  out.set("tokenizer.ggml.tokens", gguf_array(std::move(tokens)));
  out.set("tokenizer.ggml.token_type", gguf_array(std::move(types)));
  out.set("tokenizer.ggml.merges", gguf_array(std::move(merges)));
  if (bos) out.set("tokenizer.ggml.bos_token_id", gguf_scalar(*bos));
  if (eos) out.set("tokenizer.ggml.eos_token_id", gguf_scalar(*eos));
  out.set("tokenizer.ggml.add_bos_token",
          gguf_scalar(config_flag(config, "add_bos_token", false) && bos.has_value()));
  out.set("tokenizer.ggml.add_eos_token",
          gguf_scalar(config_flag(config, "add_eos_token", false) && eos.has_value()));
}

}  // namespace

void add_folder_tokenizer_metadata(const std::string& dir, TokenizerFolderKind kind,
                                   int64_t vocab_size, GgufWriter& out) {
  const std::optional<json> config = read_optional_json(dir + "/tokenizer_config.json");
  std::error_code ec;
  if (std::filesystem::is_regular_file(dir + "/tokenizer.model", ec))
    add_sentencepiece(dir + "/tokenizer.model", kind, config, vocab_size, out);
  else if (std::filesystem::is_regular_file(dir + "/tokenizer.json", ec))
    add_byte_level_bpe(dir + "/tokenizer.json", config, vocab_size, out);
  else
    throw Error("'" + dir +
                "' has no tokenizer.model or tokenizer.json: a GGUF file carries its vocabulary "
                "and llama.cpp needs one");
  if (config && config->contains("chat_template") && (*config)["chat_template"].is_string())
    out.set("tokenizer.chat_template", gguf_scalar((*config)["chat_template"].get<std::string>()));
}

void copy_tokenizer_metadata(const GgufHeader& header, GgufWriter& out) {
  for (const auto& [key, value] : header.metadata())
    if (key.starts_with("tokenizer.")) out.set(key, value);
}

}  // namespace moe
