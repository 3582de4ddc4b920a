#include "text/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace {

using nlohmann::json;

// GPT-2's pre-tokenizer regex, which ByteLevel(use_regex=true) applies.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Far above every published vocabulary (~262k); bounds the id tables a file can ask for.
constexpr int64_t kMaxId = (int64_t{1} << 22) - 1;
// Sequences nested deeper than this are refused (each level is a recursion here).
constexpr long kMaxNesting = 16;
// Backtracking bound for a regex from the file: a pathological pattern fails, never hangs.
constexpr uint32_t kMatchLimit = 10'000'000;

// ---- GPT-2's byte <-> printable code point map ----

struct ByteMap {
  std::array<std::string, 256> utf8;  // byte -> its code point, UTF-8 encoded
  std::array<int16_t, 324> byte_of;   // code point -> byte, -1 for none (all are < 324)

  ByteMap() {
    byte_of.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : 256 + extra++;
      byte_of[cp] = static_cast<int16_t>(b);
      char buf[4];
      int32_t len = 0;
      U8_APPEND_UNSAFE(buf, len, cp);
      utf8[b].assign(buf, static_cast<size_t>(len));
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

std::string map_bytes(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += byte_map().utf8[static_cast<uint8_t>(c)];
  return out;
}

}  // namespace

std::string byte_level_bytes(std::string_view token) {
  std::string out;
  const auto* s = reinterpret_cast<const uint8_t*>(token.data());
  const auto n = static_cast<int32_t>(token.size());
  for (int32_t i = 0; i < n;) {
    UChar32 c;
    U8_NEXT(s, i, n, c);
    if (c < 0 || c >= static_cast<UChar32>(byte_map().byte_of.size()) || byte_map().byte_of[c] < 0)
      return std::string(token);
    out += static_cast<char>(byte_map().byte_of[c]);
  }
  return out;
}

size_t invalid_utf8_at(std::string_view text) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const auto n = static_cast<int64_t>(text.size());
  for (int64_t i = 0; i < n;) {
    const int64_t at = i;
    UChar32 c;
    U8_NEXT(s, i, n, c);
    if (c < 0) return static_cast<size_t>(at);
  }
  return std::string_view::npos;
}

namespace {

// The \s and \w of Rust's regex crate, which tokenizers' lstrip/rstrip and single_word use:
// White_Space; Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
bool is_white_space(UChar32 c) {
  return u_isUWhiteSpace(c);
}
bool is_word_char(UChar32 c) {
  const int8_t type = u_charType(c);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || type == U_NON_SPACING_MARK ||
         type == U_ENCLOSING_MARK || type == U_COMBINING_SPACING_MARK ||
         type == U_DECIMAL_DIGIT_NUMBER || type == U_CONNECTOR_PUNCTUATION ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}
UChar32 last_char(std::string_view s) {
  auto i = static_cast<int32_t>(s.size());
  UChar32 c;
  U8_PREV(reinterpret_cast<const uint8_t*>(s.data()), 0, i, c);
  return c;
}
UChar32 first_char(std::string_view s) {
  int32_t i = 0;
  UChar32 c;
  U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, static_cast<int32_t>(s.size()), c);
  return c;
}

// ---- PCRE2 ----

struct CodeFree {
  void operator()(pcre2_code* p) const { pcre2_code_free(p); }
};
struct MatchDataFree {
  void operator()(pcre2_match_data* p) const { pcre2_match_data_free(p); }
};
struct MatchContextFree {
  void operator()(pcre2_match_context* p) const { pcre2_match_context_free(p); }
};
struct JitStackFree {
  void operator()(pcre2_jit_stack* p) const { pcre2_jit_stack_free(p); }
};

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

// What one encode call needs to run the regexes: match data and a JIT stack of its own, so
// that a tokenizer can encode on several threads at once.
class MatchScratch {
 public:
  MatchScratch()
      : data_(pcre2_match_data_create(1, nullptr)),
        context_(pcre2_match_context_create(nullptr)),
        stack_(pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr)) {
    if (!data_ || !context_ || !stack_) throw Error("tokenizer: cannot allocate the regex matcher");
    pcre2_set_match_limit(context_.get(), kMatchLimit);
    pcre2_jit_stack_assign(context_.get(), nullptr, stack_.get());
  }
  pcre2_match_data* data() const { return data_.get(); }
  pcre2_match_context* context() const { return context_.get(); }

 private:
  std::unique_ptr<pcre2_match_data, MatchDataFree> data_;
  std::unique_ptr<pcre2_match_context, MatchContextFree> context_;
  std::unique_ptr<pcre2_jit_stack, JitStackFree> stack_;
};

// Oniguruma's \s (what tokenizers' regexes mean) is Unicode's White_Space; PCRE2's also takes
// U+180E, which left White_Space in Unicode 6.3. So \s (and \S outside a class) is spelt out.
constexpr std::string_view kWhiteSpace =
    R"(\t-\r\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

std::string spell_out_white_space(std::string_view pattern) {
  std::string out;
  bool in_class = false, class_start = false;  // class_start: a ']' here is a literal
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's')
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      else if (e == 'S' && !in_class)
        out += "[^" + std::string(kWhiteSpace) + "]";
      else
        out += {c, e};
    } else if (!in_class && c == '[') {
      in_class = class_start = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      continue;
    } else if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t close = pattern.find(":]", i + 2);  // a POSIX class: copied whole
      const size_t end = close == std::string_view::npos ? pattern.size() : close + 2;
      out += pattern.substr(i, end - i);
      i = end - 1;
    } else {
      if (in_class && c == ']' && !class_start) in_class = false;
      out += c;
    }
    class_start = false;
  }
  return out;
}

// A pattern in Oniguruma's syntax (what tokenizers uses), compiled by PCRE2 with Unicode
// properties: \p{L}, \p{N}, \s and case folding all by Unicode, as Oniguruma has them.
class Regex {
 public:
  Regex(std::string_view pattern, bool literal, const std::string& where) : where_(where) {
    const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    int error = 0;
    PCRE2_SIZE offset = 0;
    const auto compile = [&](std::string_view p) {
      return pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), options, &error,
                           &offset, nullptr);
    };
    // The pattern as written first, so that an error's offset is the file's.
    code_.reset(compile(pattern));
    if (!code_)
      throw Error(where + ": not a regex PCRE2 can read (at offset " + std::to_string(offset) +
                  ": " + pcre2_message(error) + ")");
    if (!literal)
      if (pcre2_code* spelled = compile(spell_out_white_space(pattern))) code_.reset(spelled);
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // falls back to the interpreter
  }

  // Calls on_match(begin, end) for each match, left to right, with Oniguruma's iteration: an
  // empty match right where the previous match ended is skipped.
  template <class OnMatch>
  void for_each_match(std::string_view subject, const MatchScratch& scratch,
                      OnMatch&& on_match) const {
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    size_t from = 0;
    size_t last_end = std::string_view::npos;
    while (from <= subject.size()) {
      const int rc = pcre2_match(code_.get(), s, subject.size(), from, PCRE2_NO_UTF_CHECK,
                                 scratch.data(), scratch.context());
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) throw Error(where_ + ": matching failed: " + pcre2_message(rc));
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data());
      const size_t begin = ovector[0], end = ovector[1];
      if (begin == end && end == last_end) {
        from = next_char(subject, from);
        continue;
      }
      on_match(begin, end);
      from = last_end = end;
    }
  }

 private:
  static size_t next_char(std::string_view s, size_t i) {
    if (i >= s.size()) return i + 1;
    auto j = static_cast<int32_t>(i);
    U8_FWD_1(reinterpret_cast<const uint8_t*>(s.data()), j, static_cast<int32_t>(s.size()));
    return static_cast<size_t>(j);
  }

  std::string where_;
  std::unique_ptr<pcre2_code, CodeFree> code_;
};

// ---- one encode call's working memory ----

struct Symbol {
  int32_t id, prev, next;  // prev/next: neighbours in the word, -1 at its ends
};

struct Candidate {  // a merge to try at symbol `pos`, ordered by rank then position
  int32_t rank, pos, id;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Words up to this long are remembered for the rest of the call (text repeats its words;
// tokenizers keeps such a cache too), up to this many.
constexpr size_t kCachedWordBytes = 64;
constexpr size_t kCachedWords = 1 << 16;

struct EncodeScratch {
  MatchScratch match;
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, StringHash, std::equal_to<>>
      words;  // word -> (offset, count) in word_ids
  std::vector<int32_t> word_ids;
};

// ---- reading the JSON ----

// Control characters escaped (a token may hold a newline): an error stays one line.
std::string one_line(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<uint8_t>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

// Field reads that name the file and the field's path on any mismatch.
class Fields {
 public:
  explicit Fields(std::string source) : source_(std::move(source)) {}
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(one_line(source_ + ": " + field + " " + what));
  }
  const json* find(const json& object, const char* key) const {
    const auto it = object.find(key);
    return it == object.end() || it->is_null() ? nullptr : &*it;
  }
  const json& object(const json& parent, const char* key, const std::string& field) const {
    const json* v = find(parent, key);
    if (!v) fail(field, "is missing");
    if (!v->is_object()) fail(field, "must be an object");
    return *v;
  }
  std::string string(const json& v, const std::string& field) const {
    if (!v.is_string()) fail(field, "must be a string");
    return v.get<std::string>();
  }
  bool boolean(const json& object, const char* key, bool fallback, const std::string& field) const {
    const json* v = find(object, key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field + "." + key, "must be true or false");
    return v->get<bool>();
  }
  int32_t id(const json& v, const std::string& field) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxId)
      fail(field, "must be a token id in [0, " + std::to_string(kMaxId) + "]");
    return static_cast<int32_t>(v.get<int64_t>());
  }
  std::string type(const json& v, const std::string& field) const {
    if (!v.is_object()) fail(field, "must be an object");
    const json* t = find(v, "type");
    if (!t) fail(field + ".type", "is missing");
    return string(*t, field + ".type");
  }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
};

json parse_json(std::string_view text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(source + ": not valid JSON (" + json_error_text(e) + ")");
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) throw Error(path + ": read failed");
  return out.str();
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct SplitStep {
  std::unique_ptr<Regex> regex;
  Behavior behavior;
  bool invert;
};

struct AddedToken {
  std::string content;
  std::string pattern;  // what is matched: the content, normalized when the token is
  int32_t id;
  bool special, single_word, lstrip, rstrip, normalized;
};

struct Merge {
  int32_t rank, id;
};

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// A stretch of text between added tokens, or one added token (id >= 0).
struct Segment {
  std::string_view text;
  int32_t id;
};

}  // namespace

struct BpeTokenizer::Impl {
  // The model.
  std::unordered_map<std::string, int32_t> vocab;  // byte-mapped token -> id
  std::unordered_map<uint64_t, Merge> merges;      // (left id, right id) -> rank, merged id
  std::array<int32_t, 256> byte_id;                // id of each byte's one-character token
  std::optional<int32_t> unk_id;
  bool fuse_unk = false, ignore_merges = false;
  // Added tokens: matched on the raw text, or (normalized) after the normalizer. Each list is
  // bucketed by first byte, longest first, so the first hit at a position is the longest.
  std::vector<AddedToken> added;
  std::array<std::vector<uint32_t>, 256> raw_added, normalized_added;
  std::unordered_map<std::string, int32_t> added_ids;
  std::vector<const icu::Normalizer2*> normalizers;
  std::vector<SplitStep> splits;  // pre-tokenizer steps before ByteLevel
  bool add_prefix_space = false;
  std::unique_ptr<Regex> byte_level_regex;  // GPT-2's, when ByteLevel's use_regex
  // id -> index into `decoded` and `special` (-1: no token has that id).
  std::vector<int32_t> slot_of_id;
  std::vector<std::string> decoded;  // each token's bytes
  std::vector<char> special;
  std::optional<int32_t> eos;
  std::string source;  // the tokenizer.json, for errors

  void load(std::string_view text, std::string_view config_text, const std::string& source,
            const std::string& config_source);
  void load_model(const Fields& f, const json& model);
  void load_added(const Fields& f, const json& root);
  void load_normalizer(const Fields& f, const json& v, const std::string& field);
  void load_pre_tokenizer(const Fields& f, const json& v, const std::string& field,
                          bool& byte_level_seen);
  void load_decoder(const Fields& f, const json& root);
  void build_id_tables(const Fields& f);
  void load_eos(std::string_view config_text, const std::string& config_source);

  void split_added(std::string_view text, const std::array<std::vector<uint32_t>, 256>& table,
                   std::vector<Segment>& out) const;
  std::string normalize(std::string_view text) const;
  void pre_tokenize(std::string_view piece, size_t step, EncodeScratch& scratch,
                    std::vector<int32_t>& out) const;
  void byte_level(std::string_view piece, EncodeScratch& scratch, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view bytes, EncodeScratch& scratch, std::vector<int32_t>& out) const;
  void merge_word(std::string_view bytes, EncodeScratch& scratch, std::vector<int32_t>& out) const;
};

void BpeTokenizer::Impl::load(std::string_view text, std::string_view config_text,
                              const std::string& source, const std::string& config_source) {
  this->source = source;
  const Fields f(source);
  const json root = parse_json(text, source);
  if (!root.is_object()) f.fail("the top level", "must be a JSON object");
  const json& model = f.object(root, "model", "model");
  load_model(f, model);
  if (const json* n = f.find(root, "normalizer")) load_normalizer(f, *n, "normalizer");
  load_added(f, root);  // after the normalizer: normalized tokens are matched normalized
  const json* pre = f.find(root, "pre_tokenizer");
  if (!pre) f.fail("pre_tokenizer", "is missing: a byte-level BPE needs a ByteLevel step");
  bool byte_level_seen = false;
  load_pre_tokenizer(f, *pre, "pre_tokenizer", byte_level_seen);
  if (!byte_level_seen)
    f.fail("pre_tokenizer", "has no ByteLevel step: only byte-level BPE is supported");
  load_decoder(f, root);
  build_id_tables(f);
  load_eos(config_text, config_source);
}

void BpeTokenizer::Impl::load_model(const Fields& f, const json& model) {
  // Older files leave the type out; tokenizers then reads a model with merges as BPE.
  const bool untyped_bpe = !f.find(model, "type") && f.find(model, "merges");
  const std::string type = untyped_bpe ? "BPE" : f.type(model, "model");
  if (type != "BPE") f.fail("model.type", "is '" + type + "'; only 'BPE' is supported");
  const json* v = f.find(model, "vocab");
  if (!v || !v->is_object()) f.fail("model.vocab", "must be an object of token: id");
  vocab.reserve(v->size());
  for (const auto& [token, id] : v->items())
    vocab.emplace(token, f.id(id, "model.vocab['" + token + "']"));

  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const json* s = f.find(model, key); s && f.string(*s, std::string("model.") + key) != "")
      f.fail(std::string("model.") + key, "is not supported by a byte-level BPE (must be empty)");
  if (const json* d = f.find(model, "dropout"); d && (!d->is_number() || d->get<double>() != 0.0))
    f.fail("model.dropout", "is not supported (must be null or 0)");
  if (f.boolean(model, "byte_fallback", false, "model"))
    f.fail("model.byte_fallback", "is not supported by a byte-level BPE (must be false)");
  fuse_unk = f.boolean(model, "fuse_unk", false, "model");
  ignore_merges = f.boolean(model, "ignore_merges", false, "model");
  if (const json* u = f.find(model, "unk_token")) {
    const std::string unk = f.string(*u, "model.unk_token");
    const auto it = vocab.find(unk);
    if (it == vocab.end()) f.fail("model.unk_token", "'" + unk + "' is not in model.vocab");
    unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab.find(byte_map().utf8[b]);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
  }

  const json* m = f.find(model, "merges");
  if (!m || !m->is_array()) f.fail("model.merges", "must be an array");
  merges.reserve(m->size());
  const auto lookup = [&](const std::string& token, const std::string& field) {
    const auto it = vocab.find(token);
    if (it == vocab.end()) f.fail(field, "names '" + token + "', which is not in model.vocab");
    return it->second;
  };
  for (size_t rank = 0; rank < m->size(); ++rank) {
    const json& e = (*m)[rank];
    const std::string field = "model.merges[" + std::to_string(rank) + "]";
    std::string left, right;
    if (e.is_string()) {  // "a b": exactly one space, as tokenizers reads it
      const std::string s = e.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        f.fail(field, "must be two tokens separated by one space, got '" + s + "'");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (e.is_array() && e.size() == 2) {
      left = f.string(e[0], field + "[0]");
      right = f.string(e[1], field + "[1]");
    } else {
      f.fail(field, "must be a string \"a b\" or a pair [\"a\", \"b\"]");
    }
    const int32_t a = lookup(left, field), b = lookup(right, field);
    const int32_t merged = lookup(left + right, field + " (the merged token)");
    merges[pair_key(a, b)] = Merge{static_cast<int32_t>(rank), merged};  // a repeat: last wins
  }
}

void BpeTokenizer::Impl::load_added(const Fields& f, const json& root) {
  const json* list = f.find(root, "added_tokens");
  if (!list) return;
  if (!list->is_array()) f.fail("added_tokens", "must be an array");
  std::unordered_map<int32_t, const std::string*> vocab_token;  // id -> model.vocab's token
  for (const auto& entry : vocab) vocab_token.emplace(entry.second, &entry.first);
  added.reserve(list->size());                                    // keeps the pointers below valid
  std::unordered_map<int32_t, const std::string*> added_content;  // id -> an added token's
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string field = "added_tokens[" + std::to_string(i) + "]";
    if (!e.is_object()) f.fail(field, "must be an object");
    const json* content = f.find(e, "content");
    const json* id = f.find(e, "id");
    if (!content || !id) f.fail(field, "needs 'id' and 'content'");
    AddedToken t;
    t.content = f.string(*content, field + ".content");
    if (t.content.empty()) f.fail(field + ".content", "is empty");
    t.id = f.id(*id, field + ".id");
    // tokenizers gives a token of model.vocab its vocabulary id whatever the file says.
    if (const auto it = vocab.find(t.content); it != vocab.end()) t.id = it->second;
    if (const auto it = vocab_token.find(t.id); it != vocab_token.end() && *it->second != t.content)
      f.fail(field + ".id", std::to_string(t.id) + " is model.vocab's '" + *it->second + "'");
    if (const auto it = added_content.find(t.id);
        it != added_content.end() && *it->second != t.content)
      f.fail(field + ".id", std::to_string(t.id) + " is also the id of '" + *it->second + "'");
    t.special = f.boolean(e, "special", false, field);
    t.single_word = f.boolean(e, "single_word", false, field);
    t.lstrip = f.boolean(e, "lstrip", false, field);
    t.rstrip = f.boolean(e, "rstrip", false, field);
    t.normalized = f.boolean(e, "normalized", !t.special, field);
    added_ids[t.content] = t.id;
    added.push_back(std::move(t));
    added_content.emplace(added.back().id, &added.back().content);
  }
  for (uint32_t i = 0; i < added.size(); ++i) {
    AddedToken& t = added[i];
    t.pattern = t.normalized ? normalize(t.content) : t.content;
    if (t.pattern.empty()) continue;
    (t.normalized ? normalized_added : raw_added)[static_cast<uint8_t>(t.pattern[0])].push_back(i);
  }
  for (auto* table : {&raw_added, &normalized_added})
    for (auto& bucket : *table)
      std::stable_sort(bucket.begin(), bucket.end(), [&](uint32_t a, uint32_t b) {
        return added[a].pattern.size() > added[b].pattern.size();
      });
}

void BpeTokenizer::Impl::load_normalizer(const Fields& f, const json& v, const std::string& field) {
  if (std::count(field.begin(), field.end(), '[') > kMaxNesting)  // one '[' per level
    f.fail(field, "is nested more than " + std::to_string(kMaxNesting) + " Sequences deep");
  const std::string type = f.type(v, field);
  UErrorCode status = U_ZERO_ERROR;
  if (type == "Sequence") {
    const json* list = f.find(v, "normalizers");
    if (!list || !list->is_array()) f.fail(field + ".normalizers", "must be an array");
    for (size_t i = 0; i < list->size(); ++i)
      load_normalizer(f, (*list)[i], field + ".normalizers[" + std::to_string(i) + "]");
    return;
  }
  if (type != "NFC" && type != "NFD" && type != "NFKC" && type != "NFKD")
    f.fail(field + ".type",
           "'" + type + "' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)");
  const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                              : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                              : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                                               : icu::Normalizer2::getNFKDInstance(status);
  if (U_FAILURE(status) || !n)
    f.fail(field, "needs ICU's " + type + " data: " + u_errorName(status));
  normalizers.push_back(n);
}

void BpeTokenizer::Impl::load_pre_tokenizer(const Fields& f, const json& v,
                                            const std::string& field, bool& byte_level_seen) {
  if (std::count(field.begin(), field.end(), '[') > kMaxNesting)  // one '[' per level
    f.fail(field, "is nested more than " + std::to_string(kMaxNesting) + " Sequences deep");
  const std::string type = f.type(v, field);
  if (byte_level_seen) f.fail(field, "follows the ByteLevel step, which must come last");
  if (type == "Sequence") {
    const json* list = f.find(v, "pretokenizers");
    if (!list || !list->is_array()) f.fail(field + ".pretokenizers", "must be an array");
    for (size_t i = 0; i < list->size(); ++i)
      load_pre_tokenizer(f, (*list)[i], field + ".pretokenizers[" + std::to_string(i) + "]",
                         byte_level_seen);
  } else if (type == "ByteLevel") {
    byte_level_seen = true;
    add_prefix_space = f.boolean(v, "add_prefix_space", false, field);
    if (f.boolean(v, "use_regex", true, field))
      byte_level_regex = std::make_unique<Regex>(kGpt2Pattern, false, f.source() + ": " + field);
  } else if (type == "Split") {
    const json* pattern = f.find(v, "pattern");
    if (!pattern || !pattern->is_object() || pattern->size() != 1 ||
        (!pattern->contains("Regex") && !pattern->contains("String")))
      f.fail(field + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
    const bool literal = pattern->contains("String");
    const std::string pattern_field = field + ".pattern." + (literal ? "String" : "Regex");
    const std::string text = f.string(pattern->begin().value(), pattern_field);
    const json* b = f.find(v, "behavior");
    if (!b) f.fail(field + ".behavior", "is missing");
    const std::string behavior = f.string(*b, field + ".behavior");
    static const std::pair<const char*, Behavior> kBehaviors[] = {
        {"Removed", Behavior::Removed},
        {"Isolated", Behavior::Isolated},
        {"MergedWithPrevious", Behavior::MergedWithPrevious},
        {"MergedWithNext", Behavior::MergedWithNext},
        {"Contiguous", Behavior::Contiguous}};
    const auto* hit = std::find_if(std::begin(kBehaviors), std::end(kBehaviors),
                                   [&](const auto& p) { return behavior == p.first; });
    if (hit == std::end(kBehaviors))
      f.fail(field + ".behavior", "'" + behavior +
                                      "' is not one of Removed, Isolated, MergedWithPrevious, "
                                      "MergedWithNext, Contiguous");
    splits.push_back(
        SplitStep{std::make_unique<Regex>(text, literal, f.source() + ": " + pattern_field),
                  hit->second, f.boolean(v, "invert", false, field)});
  } else {
    f.fail(field + ".type",
           "'" + type + "' is not supported (supported: ByteLevel, Split, Sequence)");
  }
}

void BpeTokenizer::Impl::load_decoder(const Fields& f, const json& root) {
  const json* d = f.find(root, "decoder");
  if (!d) f.fail("decoder", "is missing: a byte-level BPE needs the ByteLevel decoder");
  const std::string type = f.type(*d, "decoder");
  if (type != "ByteLevel")
    f.fail("decoder.type", "'" + type + "' is not supported (expected 'ByteLevel')");
}

void BpeTokenizer::Impl::build_id_tables(const Fields& f) {
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : added) max_id = std::max(max_id, t.id);
  if (max_id < 0) f.fail("model.vocab", "is empty");
  slot_of_id.assign(static_cast<size_t>(max_id) + 1, -1);
  const auto add = [&](int32_t id, std::string bytes, bool is_special) {
    slot_of_id[id] = static_cast<int32_t>(decoded.size());
    decoded.push_back(std::move(bytes));
    special.push_back(is_special);
  };
  for (const auto& entry : vocab) {
    const int32_t id = entry.second;
    if (slot_of_id[id] >= 0) {
      std::string other;
      for (const auto& e : vocab)
        if (e.second == id && e.first != entry.first) other = e.first;
      f.fail("model.vocab", "gives id " + std::to_string(id) + " to both '" + entry.first +
                                "' and '" + other + "'");
    }
    add(id, byte_level_bytes(entry.first), false);
  }
  // An added token's text decodes as itself (tokenizers gives it precedence over the model's).
  for (const AddedToken& t : added) {
    const std::string bytes = byte_level_bytes(t.content);
    if (slot_of_id[t.id] >= 0) {
      decoded[slot_of_id[t.id]] = bytes;
      special[slot_of_id[t.id]] = t.special;
    } else {
      add(t.id, bytes, t.special);
    }
  }
}

void BpeTokenizer::Impl::load_eos(std::string_view config_text, const std::string& config_source) {
  if (!config_text.empty()) {
    const Fields f(config_source);
    const json config = parse_json(config_text, config_source);
    if (!config.is_object()) f.fail("the top level", "must be a JSON object");
    if (const json* e = f.find(config, "eos_token")) {
      // A string, or an AddedToken object {"content": ..., ...}.
      const json* content = e->is_object() ? f.find(*e, "content") : e;
      if (!content) f.fail("eos_token.content", "is missing");
      const std::string name =
          f.string(*content, e->is_object() ? "eos_token.content" : "eos_token");
      const auto added_it = added_ids.find(name);
      const auto vocab_it = vocab.find(name);
      if (added_it == added_ids.end() && vocab_it == vocab.end())
        f.fail("eos_token", "'" + name + "' is not a token of the tokenizer.json beside it");
      eos = added_it != added_ids.end() ? added_it->second : vocab_it->second;
      return;
    }
  }
  for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>"}) {
    const auto it = added_ids.find(name);
    if (it != added_ids.end() && special[slot_of_id[it->second]]) {
      eos = it->second;
      return;
    }
  }
}

// tokenizers' AddedVocabulary::find_matches: leftmost-longest matches (a discarded
// single_word match still consumes its text), lstrip/rstrip widened over white space.
void BpeTokenizer::Impl::split_added(std::string_view text,
                                     const std::array<std::vector<uint32_t>, 256>& table,
                                     std::vector<Segment>& out) const {
  size_t start = 0;  // end of the last segment emitted
  for (size_t i = 0; i < text.size();) {
    const AddedToken* hit = nullptr;
    for (const uint32_t k : table[static_cast<uint8_t>(text[i])])
      if (text.substr(i).starts_with(added[k].pattern)) {
        hit = &added[k];
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->pattern.size();
    i = end;
    if (hit->single_word && ((begin > 0 && is_word_char(last_char(text.substr(0, begin)))) ||
                             (end < text.size() && is_word_char(first_char(text.substr(end))))))
      continue;
    if (hit->lstrip)
      while (begin > start && is_white_space(last_char(text.substr(0, begin))))
        begin -= U8_LENGTH(last_char(text.substr(0, begin)));
    if (hit->rstrip)
      while (end < text.size() && is_white_space(first_char(text.substr(end))))
        end += U8_LENGTH(first_char(text.substr(end)));
    i = end;
    if (begin > start) out.push_back({text.substr(start, begin - start), -1});
    out.push_back({text.substr(begin, end - begin), hit->id});
    start = end;
  }
  if (start < text.size()) out.push_back({text.substr(start), -1});
}

std::string BpeTokenizer::Impl::normalize(std::string_view text) const {
  std::string current(text);
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<uint8_t>(c) < 0x80; }))
    return current;  // ASCII is in every normal form
  for (const icu::Normalizer2* n : normalizers) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::StringPiece piece(current.data(), static_cast<int32_t>(current.size()));
    if (n->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) continue;
    std::string next;
    icu::StringByteSink<std::string> sink(&next, static_cast<int32_t>(current.size()));
    status = U_ZERO_ERROR;
    n->normalizeUTF8(0, piece, sink, nullptr, status);
    if (U_FAILURE(status))
      throw Error(source + ": normalizing the text failed: " + u_errorName(status));
    current = std::move(next);
  }
  return current;
}

// tokenizers' NormalizedString::split with a regex: the matches and the gaps between them
// (is_match), turned into pieces by the behaviour; empty and removed pieces dropped.
void BpeTokenizer::Impl::pre_tokenize(std::string_view piece, size_t step, EncodeScratch& scratch,
                                      std::vector<int32_t>& out) const {
  if (step == splits.size()) return byte_level(piece, scratch, out);
  const SplitStep& split = splits[step];
  struct Span {
    size_t begin, end;
    bool flag;  // a match (then: to remove, for Removed)
  };
  std::vector<Span> spans;
  size_t prev = 0;
  split.regex->for_each_match(piece, scratch.match, [&](size_t begin, size_t end) {
    if (prev != begin) spans.push_back({prev, begin, split.invert});
    spans.push_back({begin, end, !split.invert});
    prev = end;
  });
  if (prev != piece.size()) spans.push_back({prev, piece.size(), split.invert});

  std::vector<Span> pieces;
  bool previous_match = false;
  switch (split.behavior) {
    case Behavior::Removed:
      pieces = spans;
      break;
    case Behavior::Isolated:
      for (const Span& s : spans) pieces.push_back({s.begin, s.end, false});
      break;
    case Behavior::Contiguous:
      for (const Span& s : spans) {
        if (s.flag == previous_match && !pieces.empty())
          pieces.back().end = s.end;
        else
          pieces.push_back({s.begin, s.end, false});
        previous_match = s.flag;
      }
      break;
    case Behavior::MergedWithPrevious:
      for (const Span& s : spans) {
        if (s.flag && !previous_match && !pieces.empty())
          pieces.back().end = s.end;
        else
          pieces.push_back({s.begin, s.end, false});
        previous_match = s.flag;
      }
      break;
    case Behavior::MergedWithNext:
      for (auto s = spans.rbegin(); s != spans.rend(); ++s) {
        if (s->flag && !previous_match && !pieces.empty())
          pieces.back().begin = s->begin;
        else
          pieces.push_back({s->begin, s->end, false});
        previous_match = s->flag;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
  }
  for (const Span& p : pieces)
    if (!p.flag && p.end > p.begin)
      pre_tokenize(piece.substr(p.begin, p.end - p.begin), step + 1, scratch, out);
}

void BpeTokenizer::Impl::byte_level(std::string_view piece, EncodeScratch& scratch,
                                    std::vector<int32_t>& out) const {
  std::string prefixed;
  if (add_prefix_space && !piece.starts_with(' ')) {
    prefixed.reserve(piece.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(piece);
    piece = prefixed;
  }
  if (!byte_level_regex) return bpe_word(piece, scratch, out);
  size_t prev = 0;  // Isolated: the gaps between matches are pieces too
  byte_level_regex->for_each_match(piece, scratch.match, [&](size_t begin, size_t end) {
    if (begin > prev) bpe_word(piece.substr(prev, begin - prev), scratch, out);
    if (end > begin) bpe_word(piece.substr(begin, end - begin), scratch, out);
    prev = end;
  });
  if (prev < piece.size()) bpe_word(piece.substr(prev), scratch, out);
}

void BpeTokenizer::Impl::bpe_word(std::string_view bytes, EncodeScratch& scratch,
                                  std::vector<int32_t>& out) const {
  const bool cacheable = bytes.size() <= kCachedWordBytes;
  if (cacheable) {
    const auto it = scratch.words.find(bytes);
    if (it != scratch.words.end()) {
      const auto* first = scratch.word_ids.data() + it->second.first;
      out.insert(out.end(), first, first + it->second.second);
      return;
    }
  }
  const size_t before = out.size();
  merge_word(bytes, scratch, out);
  if (cacheable && scratch.words.size() < kCachedWords) {
    const auto offset = static_cast<uint32_t>(scratch.word_ids.size());
    scratch.word_ids.insert(scratch.word_ids.end(), out.begin() + before, out.end());
    scratch.words.emplace(bytes, std::pair(offset, static_cast<uint32_t>(out.size() - before)));
  }
}

// tokenizers' BPE::merge_word and Word::merge_all: one symbol per byte, then repeatedly the
// pair of lowest rank (leftmost on ties) merged, through a heap of candidate merges.
void BpeTokenizer::Impl::merge_word(std::string_view bytes, EncodeScratch& scratch,
                                    std::vector<int32_t>& out) const {
  if (ignore_merges) {
    const auto it = vocab.find(map_bytes(bytes));
    if (it != vocab.end()) return out.push_back(it->second);
  }
  std::vector<Symbol>& symbols = scratch.symbols;
  symbols.clear();
  bool pending_unk = false;  // an unknown byte not yet emitted (fuse_unk joins a run of them)
  const auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1});
  };
  for (const char c : bytes) {
    const int32_t id = byte_id[static_cast<uint8_t>(c)];
    if (id >= 0) {
      if (pending_unk) push(*unk_id);
      pending_unk = false;
      push(id);
    } else if (unk_id) {  // without an unk_token, tokenizers drops an unknown symbol
      if (pending_unk && !fuse_unk) push(*unk_id);
      pending_unk = true;
    }
  }
  if (pending_unk) push(*unk_id);

  std::vector<Candidate>& heap = scratch.heap;
  heap.clear();
  const auto consider = [&](int32_t pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    const auto it = merges.find(pair_key(symbols[pos].id, symbols[symbols[pos].next].id));
    if (it == merges.end()) return;
    heap.push_back({it->second.rank, pos, it->second.id});
    std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    // A stale entry: the pair there now does not make this merge's token.
    const auto it = merges.find(pair_key(left.id, symbols[left.next].id));
    if (it == merges.end() || it->second.id != top.id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    right.id = -1;
    consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& s : symbols)
    if (s.id >= 0) out.push_back(s.id);
}

BpeTokenizer::BpeTokenizer(const std::string& tokenizer_json_path)
    : impl_(std::make_unique<Impl>()) {
  namespace fs = std::filesystem;
  const std::string text = read_file(tokenizer_json_path);
  const fs::path config = fs::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  const std::string config_text = fs::exists(config, ec) ? read_file(config.string()) : "";
  impl_->load(text, config_text, tokenizer_json_path, config.string());
}

BpeTokenizer::BpeTokenizer(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                           const std::string& source)
    : impl_(std::make_unique<Impl>()) {
  const auto config = std::filesystem::path(source).parent_path() / "tokenizer_config.json";
  impl_->load(tokenizer_json, tokenizer_config_json, source, config.string());
}

BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  // ICU's UTF-8 walks index with int32_t.
  if (text.size() > static_cast<size_t>(INT32_MAX))
    throw Error(impl_->source + ": cannot encode " + format_bytes(text.size()) +
                " in one call (at most 2 GiB)");
  if (const size_t bad = invalid_utf8_at(text); bad != std::string_view::npos)
    throw Error(impl_->source + ": cannot encode text that is not valid UTF-8 (byte " +
                std::to_string(bad) + ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  EncodeScratch scratch;
  std::vector<Segment> segments, normalized_segments;
  impl_->split_added(text, impl_->raw_added, segments);
  for (const Segment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    const std::string normalized =
        impl_->normalizers.empty() ? std::string() : impl_->normalize(segment.text);
    normalized_segments.clear();
    impl_->split_added(impl_->normalizers.empty() ? segment.text : std::string_view(normalized),
                       impl_->normalized_added, normalized_segments);
    for (const Segment& piece : normalized_segments) {
      if (piece.id >= 0)
        ids.push_back(piece.id);
      else
        impl_->pre_tokenize(piece.text, 0, scratch, ids);
    }
  }
  return ids;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, SpecialTokens special) const {
  std::string out;
  for (const int32_t id : ids) {
    const int32_t slot = id >= 0 && id < vocab_size() ? impl_->slot_of_id[id] : -1;
    if (slot < 0)
      throw Error(impl_->source + ": token id " + std::to_string(id) +
                  " is not in the vocabulary (ids 0.." + std::to_string(vocab_size() - 1) + ")");
    if (special == SpecialTokens::Skip && impl_->special[slot]) continue;
    out += impl_->decoded[slot];
  }
  return out;
}

int32_t BpeTokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->slot_of_id.size());
}

std::optional<int32_t> BpeTokenizer::eos_id() const {
  return impl_->eos;
}

bool BpeTokenizer::is_special(int32_t id) const {
  if (id < 0 || id >= vocab_size() || impl_->slot_of_id[id] < 0) return false;
  return impl_->special[impl_->slot_of_id[id]];
}

std::optional<int32_t> BpeTokenizer::token_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = impl_->added_ids.find(key); it != impl_->added_ids.end()) return it->second;
  if (const auto it = impl_->vocab.find(key); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

}  // namespace moe
