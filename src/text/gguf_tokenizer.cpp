#include "text/gguf_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <array>
#include <bit>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>

#include "tensor/error.h"
#include "tensor/gguf.h"

namespace moe {
namespace {

using nlohmann::json;

constexpr std::string_view kModelKey = "tokenizer.ggml.model";
constexpr std::string_view kPreKey = "tokenizer.ggml.pre";
constexpr std::string_view kTokensKey = "tokenizer.ggml.tokens";
constexpr std::string_view kScoresKey = "tokenizer.ggml.scores";
constexpr std::string_view kTypesKey = "tokenizer.ggml.token_type";
constexpr std::string_view kMergesKey = "tokenizer.ggml.merges";

std::string quoted_key(std::string_view key) {
  return "metadata '" + std::string(key) + "'";
}

// ---- metadata ----

// An integer scalar of any of GGUF's integer types (converters write u32 ids, some i32).
std::optional<int64_t> integer_of(const GgufHeader& h, std::string_view key) {
  const GgufValue* v = h.find(key);
  if (!v) return std::nullopt;
  std::optional<int64_t> out;
  if (!v->is_array)
    std::visit(
        [&](const auto& elements) {
          using T = typename std::decay_t<decltype(elements)>;
          if constexpr (!std::is_same_v<T, std::monostate>) {
            using E = typename T::value_type;
            if constexpr (std::is_integral_v<E> && !std::is_same_v<E, bool>) {
              const E e = elements.front();
              // u64 values past int64's range are out of every vocabulary anyway.
              out = std::is_unsigned_v<E> && e > static_cast<E>(INT64_MAX)
                        ? INT64_MAX
                        : static_cast<int64_t>(e);
            }
          }
        },
        v->values);
  if (!out)
    throw Error(h.source() + ": " + quoted_key(key) + " is " + v->type_name() +
                ", expected an integer");
  return out;
}

// A token id: absent -> default_id (when inside the vocabulary, else -1); present -> checked.
int32_t token_id(const GgufHeader& h, std::string_view key, int32_t default_id, size_t tokens) {
  const std::optional<int64_t> id = integer_of(h, key);
  if (!id) return default_id >= 0 && static_cast<size_t>(default_id) < tokens ? default_id : -1;
  if (*id < 0 || static_cast<uint64_t>(*id) >= tokens)
    throw Error(h.source() + ": " + quoted_key(key) + " is " + std::to_string(*id) +
                ", outside the vocabulary of " + std::to_string(tokens) + " tokens");
  return static_cast<int32_t>(*id);
}

bool flag(const GgufHeader& h, std::string_view key, bool default_value) {
  return h.has(key) ? h.get<bool>(key) : default_value;
}

struct Vocabulary {
  std::vector<std::string> tokens;
  std::vector<GgufTokenType> types;
  std::vector<float> scores;
};

// The per-token arrays, checked as llama.cpp loads them: tokens required and unique (an empty
// one renamed "[EMPTY_<id>]", as llama.cpp does); scores (f32 or i32) and types optional but,
// when present, covering every token. A type number llama.cpp does not know is Undefined.
Vocabulary read_vocabulary(const GgufHeader& h) {
  Vocabulary v;
  v.tokens = h.get_array<std::string>(kTokensKey);
  const size_t n = v.tokens.size();
  if (n == 0) throw Error(h.source() + ": " + quoted_key(kTokensKey) + " is empty");
  if (n > static_cast<size_t>(INT32_MAX))
    throw Error(h.source() + ": " + quoted_key(kTokensKey) + " has more tokens than ids");
  const auto require_covers = [&](std::string_view key, size_t size) {
    if (size < n)
      throw Error(h.source() + ": " + quoted_key(key) + " has " + std::to_string(size) +
                  " entries for " + std::to_string(n) + " tokens");
  };
  v.scores.assign(n, 0.0f);
  if (const GgufValue* s = h.find(kScoresKey)) {
    if (s->is_array && s->element_type() == GgufValueType::I32) {
      const auto& ints = h.get_array<int32_t>(kScoresKey);
      require_covers(kScoresKey, ints.size());
      std::copy_n(ints.begin(), n, v.scores.begin());
    } else {
      const auto& floats = h.get_array<float>(kScoresKey);
      require_covers(kScoresKey, floats.size());
      std::copy_n(floats.begin(), n, v.scores.begin());
    }
  }
  v.types.assign(n, GgufTokenType::Normal);
  if (h.has(kTypesKey)) {
    const auto& types = h.get_array<int32_t>(kTypesKey);
    require_covers(kTypesKey, types.size());
    for (size_t i = 0; i < n; ++i)
      v.types[i] = types[i] >= 0 && types[i] <= 6 ? static_cast<GgufTokenType>(types[i])
                                                  : GgufTokenType::Undefined;
  }
  std::unordered_map<std::string_view, size_t> first_id;
  first_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (v.tokens[i].empty()) v.tokens[i] = "[EMPTY_" + std::to_string(i) + "]";
    const auto [it, fresh] = first_id.emplace(v.tokens[i], i);
    if (!fresh)
      throw Error(h.source() + ": " + quoted_key(kTokensKey) + " holds '" + v.tokens[i] +
                  "' twice (ids " + std::to_string(it->second) + " and " + std::to_string(i) + ")");
  }
  return v;
}

// Texts that llama.cpp takes for the end of a turn or of generation whatever the file says:
// such a token becomes a control token (matched in prompts with parse_special, hidden by
// decode's Skip) and ends generation. Its lists, as of the commit the tests use.
constexpr std::string_view kEndOfGenerationTexts[] = {"<|eot_id|>",
                                                      "<|im_end|>",
                                                      "<|end|>",
                                                      "<|return|>",
                                                      "<|call|>",
                                                      "<|flush|>",
                                                      "<|calls|>",
                                                      "<end_of_turn>",
                                                      "<|endoftext|>",
                                                      "</s>",
                                                      "<|eom_id|>",
                                                      "<EOT>",
                                                      "_<EOT>",
                                                      "[EOT]",
                                                      "[EOS]",
                                                      "<|end_of_text|>",
                                                      "<end_of_utterance>",
                                                      "<eos>",
                                                      "<turn|>",
                                                      "<|tool_response>",
                                                      "<｜end▁of▁sentence｜>",
                                                      "[e~["};

bool is_end_of_generation_text(std::string_view text) {
  return std::find(std::begin(kEndOfGenerationTexts), std::end(kEndOfGenerationTexts), text) !=
         std::end(kEndOfGenerationTexts);
}

// ---- bytes of tokens ----

// "<0xXX>" -> XX, the form of sentencepiece's byte pieces; -1 for any other text.
int byte_of_piece(std::string_view piece) {
  const auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  if (piece.size() != 6 || !piece.starts_with("<0x") || piece[5] != '>') return -1;
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// A sentencepiece piece's bytes: U+2581 stands for a space.
std::string unescape_spaces(std::string_view piece) {
  constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";
  std::string out;
  for (size_t at = 0; at < piece.size();) {
    if (piece.substr(at).starts_with(kSpaceSymbol)) {
      out += ' ';
      at += kSpaceSymbol.size();
    } else {
      out += piece[at++];
    }
  }
  return out;
}

// What llama.cpp's token_to_piece gives for each token (with special = true).
std::vector<std::string> token_bytes_of(const Vocabulary& v, bool sentencepiece,
                                        const std::string& source) {
  std::vector<std::string> bytes(v.tokens.size());
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    const std::string& text = v.tokens[id];
    switch (v.types[id]) {
      case GgufTokenType::Control:
      case GgufTokenType::Unknown:
      case GgufTokenType::UserDefined:
        bytes[id] = text;
        break;
      case GgufTokenType::Normal:
        bytes[id] = sentencepiece ? unescape_spaces(text) : byte_level_bytes(text);
        break;
      case GgufTokenType::Byte:
        if (!sentencepiece) {
          bytes[id] = byte_level_bytes(text);
        } else if (const int b = byte_of_piece(text); b >= 0) {
          bytes[id] = std::string(1, static_cast<char>(b));
        } else {
          throw Error(source + ": token " + std::to_string(id) + " '" + text +
                      "' is a byte token (" + std::string(kTypesKey) + " 6) but not <0xXX>");
        }
        break;
      case GgufTokenType::Unused:
      case GgufTokenType::Undefined:
        break;  // llama.cpp prints nothing for them
    }
  }
  return bytes;
}

// ---- model "llama": a sentencepiece ModelProto ----

// The few parts of protocol buffers' wire format a ModelProto needs: each field is a key
// (field number << 3 | wire type) as a varint, then its value.
class ProtoWriter {
 public:
  void varint_field(uint32_t field, uint64_t value) {
    key(field, 0);
    varint(value);
  }
  // int32 as protobuf writes it: a negative value sign-extended to ten bytes.
  void int32_field(uint32_t field, int32_t value) {
    varint_field(field, static_cast<uint64_t>(static_cast<int64_t>(value)));
  }
  void float_field(uint32_t field, float value) {  // wire type 5: four bytes, little-endian
    key(field, 5);
    const auto bits = std::bit_cast<uint32_t>(value);
    for (int shift = 0; shift < 32; shift += 8) out_ += static_cast<char>((bits >> shift) & 0xFF);
  }
  void bytes_field(uint32_t field, std::string_view bytes) {  // wire type 2: length, bytes
    key(field, 2);
    varint(bytes.size());
    out_ += bytes;
  }
  const std::string& bytes() const { return out_; }

 private:
  void key(uint32_t field, uint32_t wire_type) { varint(uint64_t{field} << 3 | wire_type); }
  void varint(uint64_t value) {
    for (; value >= 0x80; value >>= 7) out_ += static_cast<char>((value & 0x7F) | 0x80);
    out_ += static_cast<char>(value);
  }
  std::string out_;
};

// Field numbers and values from sentencepiece's src/sentencepiece_model.proto.
namespace proto {
constexpr uint32_t kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3;
constexpr uint32_t kPiecePiece = 1, kPieceScore = 2, kPieceType = 3;
constexpr uint32_t kPieceNormal = 1, kPieceUnknown = 2, kPieceByte = 6;
constexpr uint32_t kTrainerModelType = 3, kTrainerByteFallback = 35;
constexpr uint32_t kTrainerUnkId = 40, kTrainerBosId = 41, kTrainerEosId = 42, kTrainerPadId = 43;
constexpr uint32_t kModelTypeBpe = 2;
constexpr uint32_t kNormalizerName = 1, kNormalizerAddDummyPrefix = 3;
constexpr uint32_t kNormalizerRemoveExtraWhitespaces = 4, kNormalizerEscapeWhitespaces = 5;
}  // namespace proto

// The vocabulary as a BPE ModelProto that merges as llama.cpp's SPM tokenizer does: every
// token may be the result of a merge (llama.cpp looks merges up among all tokens, so all but
// the unknown and byte tokens are NORMAL here; the literal ones never reach sentencepiece,
// which gets the text between them). Byte fallback when all 256 <0xXX> tokens are there.
std::string sentencepiece_model_proto(const Vocabulary& v, int32_t unk_id, bool add_space_prefix) {
  std::array<bool, 256> byte_seen{};
  for (size_t id = 0; id < v.tokens.size(); ++id)
    if (v.types[id] == GgufTokenType::Byte) byte_seen[byte_of_piece(v.tokens[id])] = true;
  const bool byte_fallback =
      std::all_of(byte_seen.begin(), byte_seen.end(), [](bool b) { return b; });

  ProtoWriter model;
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    uint32_t type = proto::kPieceNormal;
    if (static_cast<int32_t>(id) == unk_id) type = proto::kPieceUnknown;
    if (byte_fallback && v.types[id] == GgufTokenType::Byte) type = proto::kPieceByte;
    ProtoWriter piece;
    piece.bytes_field(proto::kPiecePiece, v.tokens[id]);
    piece.float_field(proto::kPieceScore, v.scores[id]);
    piece.varint_field(proto::kPieceType, type);
    model.bytes_field(proto::kModelPieces, piece.bytes());
  }
  ProtoWriter trainer;
  trainer.varint_field(proto::kTrainerModelType, proto::kModelTypeBpe);
  trainer.varint_field(proto::kTrainerByteFallback, byte_fallback);
  trainer.int32_field(proto::kTrainerUnkId, unk_id);
  for (const uint32_t field : {proto::kTrainerBosId, proto::kTrainerEosId, proto::kTrainerPadId})
    trainer.int32_field(field, -1);  // BOS and EOS are this class's business, not sentencepiece's
  model.bytes_field(proto::kModelTrainerSpec, trainer.bytes());
  ProtoWriter normalizer;  // llama.cpp's: no normalization, spaces as U+2581, no trimming
  normalizer.bytes_field(proto::kNormalizerName, "identity");
  normalizer.varint_field(proto::kNormalizerAddDummyPrefix, add_space_prefix);
  normalizer.varint_field(proto::kNormalizerRemoveExtraWhitespaces, false);
  normalizer.varint_field(proto::kNormalizerEscapeWhitespaces, true);
  model.bytes_field(proto::kModelNormalizerSpec, normalizer.bytes());
  return model.bytes();
}

// ---- model "gpt2": a tokenizer.json ----

// The pre-tokenizers of tokenizer.ggml.pre, as the models' own tokenizer.json files have them
// (llama.cpp's src/llama-vocab.cpp names which `pre` values share which rules).
struct PreTokenizer {
  std::vector<std::string_view> names;   // tokenizer.ggml.pre values
  std::vector<std::string_view> splits;  // Split(Isolated) regexes, in turn, before ByteLevel
  bool gpt2_regex = false;               // ByteLevel's own split by GPT-2's regex
  bool ignore_merges = false;            // a pre-tokenized word that is a token stays whole
  bool add_bos = false;                  // llama.cpp's add_bos_token when the file is silent
};

// Llama 3's and Qwen2's regexes as their tokenizer.json files write them.
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::vector<PreTokenizer>& pre_tokenizers() {
  static const std::vector<PreTokenizer> table = {
      // llama.cpp's own rules for a file that names no pre-tokenizer.
      {{"default"},
       {R"([\p{P}\$\+<=>\^~\|]+)",
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))", R"(\p{N}+)",
        R"([0-9][0-9][0-9])"}},
      {{"gpt-2"}, {}, true},
      {{"olmo"}, {}, true},  // GPT-NeoX's tokenizer: GPT-2's rules
      {{"qwen2"}, {kQwen2Regex}},
      {{"llama-bpe", "llama3", "llama-v3"}, {kLlama3Regex}, false, true, true},
  };
  return table;
}

const PreTokenizer& find_pre_tokenizer(const std::string& pre, const std::string& source) {
  std::string supported;
  for (const PreTokenizer& p : pre_tokenizers())
    for (const std::string_view name : p.names) {
      if (name == pre) return p;
      supported += (supported.empty() ? "" : ", ") + std::string(name);
    }
  throw Error(source + ": " + quoted_key(kPreKey) + " is '" + pre +
              "', a pre-tokenizer this reader does not support (supported: " + supported + ")");
}

json pre_tokenizer_json(const PreTokenizer& pre) {
  json steps = json::array();
  for (const std::string_view regex : pre.splits)
    steps.push_back({{"type", "Split"},
                     {"pattern", {{"Regex", regex}}},
                     {"behavior", "Isolated"},
                     {"invert", false}});
  steps.push_back(
      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", pre.gpt2_regex}});
  return {{"type", "Sequence"}, {"pretokenizers", std::move(steps)}};
}

// A JSON string of `s`, appended (tokens are UTF-8 already; only quotes, backslashes and
// control characters need escapes).
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      constexpr std::string_view kHex = "0123456789abcdef";
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += c;
    }
  }
  out += '"';
}

// The tokenizer.json of the vocabulary: every token in model.vocab at its id (llama.cpp
// looks merged words up among all tokens), no added tokens (GgufTokenizer matches them
// itself, as llama.cpp does), no normalizer (llama.cpp applies none). Written as text, not
// built as a json object: a vocabulary of 150k tokens and 280k merges would cost a second.
std::string tokenizer_json(const GgufHeader& h, const Vocabulary& v, const PreTokenizer& pre) {
  std::unordered_map<std::string_view, int32_t> ids;
  ids.reserve(v.tokens.size());
  std::string out = R"({"model":{"type":"BPE","ignore_merges":)";
  out += pre.ignore_merges ? "true" : "false";
  out += R"(,"vocab":{)";
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    ids.emplace(v.tokens[id], static_cast<int32_t>(id));
    if (id > 0) out += ',';
    append_json_string(out, v.tokens[id]);
    out += ':' + std::to_string(id);
  }
  out += R"(},"merges":[)";
  const auto& merges = h.get_array<std::string>(kMergesKey);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string_view merge = merges[rank];
    const size_t space = merge.find(' ', 1);  // from 1: llama.cpp's split of "a b"
    const auto fail = [&](const std::string& what) {
      throw Error(h.source() + ": " + quoted_key(kMergesKey) + "[" + std::to_string(rank) + "] '" +
                  std::string(merge) + "' " + what);
    };
    if (space == std::string_view::npos) fail("is not two tokens separated by a space");
    const std::string_view left = merge.substr(0, space), right = merge.substr(space + 1);
    for (const std::string& part :
         {std::string(left), std::string(right), std::string(left) += right})
      if (!ids.contains(part)) fail("names '" + part + "', which is not a token");
    out += rank > 0 ? ",[" : "[";
    append_json_string(out, left);
    out += ',';
    append_json_string(out, right);
    out += ']';
  }
  out += R"(]},"pre_tokenizer":)" + pre_tokenizer_json(pre).dump() +
         R"(,"decoder":{"type":"ByteLevel"}})";
  return out;
}

}  // namespace

std::optional<std::string> gguf_pre_tokenizer_name(const std::vector<std::string>& splits,
                                                   bool byte_level_regex) {
  for (const PreTokenizer& p : pre_tokenizers()) {
    if (p.names.front() == "default") continue;  // llama.cpp's guess, never a file's own rules
    if (p.gpt2_regex == byte_level_regex &&
        std::equal(p.splits.begin(), p.splits.end(), splits.begin(), splits.end()))
      return std::string(p.names.front());
  }
  return std::nullopt;
}

GgufTokenizer::GgufTokenizer(const GgufHeader& header) : source_(header.source()) {
  model_ = header.get<std::string>(kModelKey);
  const bool sentencepiece = model_ == "llama";
  if (!sentencepiece && model_ != "gpt2")
    throw Error(source_ + ": " + quoted_key(kModelKey) + " is '" + model_ +
                "', a tokenizer this reader does not support (supported: llama, gpt2)");
  Vocabulary v = read_vocabulary(header);
  const size_t n = v.tokens.size();
  for (size_t id = 0; id < n; ++id)
    if (is_end_of_generation_text(v.tokens[id])) {
      v.types[id] = GgufTokenType::Control;
      end_of_generation_.push_back(static_cast<int32_t>(id));
    }
  // llama.cpp's defaults when the file is silent: <unk> <s> </s> at 0 1 2 for sentencepiece
  // vocabularies; none for byte-level ones (llama.cpp's 11 there is a placeholder).
  bos_id_ = token_id(header, "tokenizer.ggml.bos_token_id", sentencepiece ? 1 : -1, n);
  eos_id_ = token_id(header, "tokenizer.ggml.eos_token_id", sentencepiece ? 2 : -1, n);
  const int32_t unk_id = token_id(header, "tokenizer.ggml.unknown_token_id", -1, n);
  if (eos_id_ >= 0) end_of_generation_.push_back(eos_id_);
  std::sort(end_of_generation_.begin(), end_of_generation_.end());
  end_of_generation_.erase(std::unique(end_of_generation_.begin(), end_of_generation_.end()),
                           end_of_generation_.end());

  const PreTokenizer* pre = nullptr;
  if (!sentencepiece) {
    // A file without the key: llama.cpp's "default" (and its warning that quality suffers).
    pre_ = header.has(kPreKey) ? header.get<std::string>(kPreKey) : "default";
    pre = &find_pre_tokenizer(pre_, source_);
  }
  add_bos_ = flag(header, "tokenizer.ggml.add_bos_token", sentencepiece || pre->add_bos);
  add_eos_ = flag(header, "tokenizer.ggml.add_eos_token", false);
  add_space_prefix_ = flag(header, "tokenizer.ggml.add_space_prefix", sentencepiece);
  if (add_bos_ && bos_id_ < 0)
    throw Error(source_ +
                ": prompts start with BOS (tokenizer.ggml.add_bos_token) but "
                "metadata 'tokenizer.ggml.bos_token_id' is missing");
  if (add_eos_ && eos_id_ < 0)
    throw Error(source_ +
                ": prompts end with EOS (tokenizer.ggml.add_eos_token) but "
                "metadata 'tokenizer.ggml.eos_token_id' is missing");

  bytes_ = token_bytes_of(v, sentencepiece, source_);
  for (size_t id = 0; id < n; ++id)
    if (v.types[id] == GgufTokenType::Control || v.types[id] == GgufTokenType::UserDefined ||
        v.types[id] == GgufTokenType::Unknown)
      literal_tokens_.push_back(static_cast<int32_t>(id));
  std::stable_sort(literal_tokens_.begin(), literal_tokens_.end(),
                   [&](int32_t a, int32_t b) { return v.tokens[a].size() > v.tokens[b].size(); });

  if (sentencepiece) {
    // sentencepiece needs one unknown piece: the file's, else the first of that type.
    int32_t unk = unk_id;
    for (size_t id = 0; id < n && unk < 0; ++id)
      if (v.types[id] == GgufTokenType::Unknown) unk = static_cast<int32_t>(id);
    if (unk < 0) unk = 0;  // llama.cpp's default
    sentencepiece_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = sentencepiece_->LoadFromSerializedProto(
        sentencepiece_model_proto(v, unk, add_space_prefix_));
    if (!status.ok())
      throw Error(source_ +
                  ": sentencepiece refuses the vocabulary of metadata 'tokenizer.ggml.*': " +
                  status.ToString());
  } else {
    bpe_ = std::make_unique<BpeTokenizer>(tokenizer_json(header, v, *pre), "",
                                          source_ + " (tokenizer.ggml.* as a tokenizer.json)");
  }
  tokens_ = std::move(v.tokens);
  types_ = std::move(v.types);
}

GgufTokenizer::~GgufTokenizer() = default;
GgufTokenizer::GgufTokenizer(GgufTokenizer&&) noexcept = default;
GgufTokenizer& GgufTokenizer::operator=(GgufTokenizer&&) noexcept = default;

// llama.cpp's tokenizer_st_partition: for each literal token, the longest first, every
// occurrence in the text not yet matched is cut out.
std::vector<GgufTokenizer::Fragment> GgufTokenizer::partition(std::string_view text,
                                                              bool parse_special) const {
  std::vector<Fragment> fragments, next;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (const int32_t id : literal_tokens_) {
    if (!parse_special && types_[id] != GgufTokenType::UserDefined) continue;
    const std::string& token = tokens_[id];
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view within = text.substr(0, f.end);
      size_t at = f.begin;
      for (size_t hit; (hit = within.find(token, at)) != std::string_view::npos;) {
        if (hit > at) next.push_back({-1, at, hit});
        next.push_back({id, hit, hit + token.size()});
        at = hit + token.size();
      }
      if (at < f.end) next.push_back({-1, at, f.end});
    }
    fragments.swap(next);
  }
  return fragments;
}

std::vector<int32_t> GgufTokenizer::encode(std::string_view text, bool parse_special) const {
  if (const size_t at = invalid_utf8_at(text); at != std::string_view::npos)
    throw Error("tokenizer of " + source_ + ": the text is not UTF-8 (byte " + std::to_string(at) +
                ")");
  std::vector<int32_t> ids;
  std::vector<int> piece_ids;
  for (const Fragment& f : partition(text, parse_special)) {
    if (f.token >= 0) {
      ids.push_back(f.token);
      continue;
    }
    const std::string_view piece = text.substr(f.begin, f.end - f.begin);
    if (bpe_) {
      const std::vector<int32_t> more = bpe_->encode(piece);
      ids.insert(ids.end(), more.begin(), more.end());
      continue;
    }
    // Each piece gets the dummy prefix: it starts the text or follows a literal token, where
    // llama.cpp adds the space too.
    const auto status = sentencepiece_->Encode(piece, &piece_ids);
    if (!status.ok())
      throw Error("tokenizer of " + source_ + ": sentencepiece failed: " + status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  return ids;
}

std::vector<int32_t> GgufTokenizer::encode_prompt(std::string_view text) const {
  std::vector<int32_t> ids;
  if (add_bos_) ids.push_back(bos_id_);
  const std::vector<int32_t> body = encode(text, true);
  ids.insert(ids.end(), body.begin(), body.end());
  if (add_eos_) ids.push_back(eos_id_);
  return ids;
}

void GgufTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw Error("tokenizer of " + source_ + ": id " + std::to_string(id) +
                " is outside the vocabulary of " + std::to_string(vocab_size()) + " tokens");
}

std::string GgufTokenizer::decode(std::span<const int32_t> ids, SpecialTokens special) const {
  std::string text;
  bool drop_space = add_space_prefix_;  // the encoder's dummy prefix, on the first token only
  for (const int32_t id : ids) {
    check_id(id);
    const bool hidden = special == SpecialTokens::Skip && (types_[id] == GgufTokenType::Control ||
                                                           types_[id] == GgufTokenType::Unknown);
    std::string_view bytes = hidden ? std::string_view() : bytes_[id];
    if (drop_space && bytes.starts_with(' ')) bytes.remove_prefix(1);
    drop_space = false;
    text += bytes;
  }
  return text;
}

const std::string& GgufTokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return bytes_[id];
}

const std::string& GgufTokenizer::piece(int32_t id) const {
  check_id(id);
  return tokens_[id];
}

bool GgufTokenizer::ends_generation(int32_t id) const {
  return std::binary_search(end_of_generation_.begin(), end_of_generation_.end(), id);
}

GgufTokenType GgufTokenizer::token_type(int32_t id) const {
  check_id(id);
  return types_[id];
}

}  // namespace moe
