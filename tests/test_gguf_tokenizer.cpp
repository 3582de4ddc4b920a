// GGUF tokenizers (text/gguf_tokenizer) against llama.cpp's own tokenizer tests: the vocabulary-
// only files of its models/ folder and, beside them, its cases (<vocab>.gguf.inp: the inputs,
// <vocab>.gguf.out: the ids, one line each), compared as its tests/test-tokenizer-0.cpp does
// (add_special false, parse_special false). Then what those cases leave out (control tokens
// in the text, prompts with BOS, decoding) and bad metadata, each refused in one line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "tensor/error.h"
#include "tensor/gguf.h"
#include "test_util.h"
#include "text/folder_tokenizer.h"
#include "text/gguf_tokenizer.h"

namespace moe {
namespace {

using test::error_of;

// llama.cpp's source, as scripts/llama_cpp_source.sh leaves it (scripts/test.sh runs it first).
std::string llama_cpp_models() {
  return std::string(MOE_SOURCE_DIR) + "/build-llama/src/models";
}

// The vocabulary file `name`, failing the test (not skipping it) when the source is missing.
std::string vocab_path(const std::string& name) {
  const std::string path = llama_cpp_models() + "/ggml-vocab-" + name + ".gguf";
  if (!std::filesystem::exists(path))
    ADD_FAILURE() << path << " is missing: run scripts/llama_cpp_source.sh first "
                  << "(it fetches llama.cpp's source into build-llama/src)";
  return path;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Case {
  std::string input;
  std::vector<int32_t> expected;
};

// llama.cpp's test files: inputs separated by "\n__ggml_vocab_test__\n" (the last one ends
// with it), outputs one line each, ids separated by spaces.
std::vector<Case> read_cases(const std::string& vocab) {
  const std::string inputs = read_text(vocab + ".inp");
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<Case> cases;
  for (size_t at = 0; at < inputs.size();) {
    const size_t next = inputs.find(separator, at);
    if (next == std::string::npos) {
      cases.push_back({inputs.substr(at), {}});
      break;
    }
    cases.push_back({inputs.substr(at, next - at), {}});
    at = next + separator.size();
  }
  std::istringstream outputs(read_text(vocab + ".out"));
  size_t i = 0;
  for (std::string line; std::getline(outputs, line); ++i) {
    if (i >= cases.size()) break;
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) cases[i].expected.push_back(id);
  }
  EXPECT_EQ(i, cases.size()) << vocab << ": .inp and .out hold different numbers of cases";
  return cases;
}

std::string ids_text(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (const int32_t id : ids) {
    if (s.size() > 1) s += ' ';
    s += std::to_string(id);
  }
  return s += ']';
}

GgufTokenizer load(const std::string& name) {
  const GgufFile file(vocab_path(name));
  return GgufTokenizer(file.header());
}

// Every case of llama.cpp's test for `name` gives llama.cpp's ids, and decodes back to its text.
void expect_llama_cpp_cases(const std::string& name) {
  const std::string path = vocab_path(name);
  const GgufTokenizer tokenizer = load(name);
  const std::vector<Case> cases = read_cases(path);
  ASSERT_GT(cases.size(), 40u) << path;
  size_t matched = 0, round_trips = 0;
  for (const Case& c : cases) {
    const std::vector<int32_t> ids = tokenizer.encode(c.input, /*parse_special=*/false);
    if (ids == c.expected)
      ++matched;
    else
      ADD_FAILURE() << name << ": '" << c.input << "'\n  llama.cpp: " << ids_text(c.expected)
                    << "\n  here:      " << ids_text(ids);
    if (tokenizer.decode(ids) == c.input)
      ++round_trips;
    else
      ADD_FAILURE() << name << ": '" << c.input << "' decodes to '" << tokenizer.decode(ids) << "'";
  }
  std::printf("%s: %zu of %zu cases give llama.cpp's ids, %zu decode back to their text\n",
              name.c_str(), matched, cases.size(), round_trips);
  EXPECT_EQ(matched, cases.size());
}

TEST(GgufTokenizerLlamaCpp, LlamaSentencepiece) {
  expect_llama_cpp_cases("llama-spm");
}
TEST(GgufTokenizerLlamaCpp, Gpt2) {
  expect_llama_cpp_cases("gpt-2");
}
TEST(GgufTokenizerLlamaCpp, Qwen2) {
  expect_llama_cpp_cases("qwen2");
}
TEST(GgufTokenizerLlamaCpp, Llama3) {
  expect_llama_cpp_cases("llama-bpe");
}

TEST(GgufTokenizer, ReadsTheSpecialTokensAndFlags) {
  const GgufTokenizer spm = load("llama-spm");
  EXPECT_TRUE(spm.is_sentencepiece());
  EXPECT_EQ(spm.vocab_size(), 32000);
  EXPECT_EQ(spm.bos_id(), 1);
  EXPECT_EQ(spm.eos_id(), 2);
  EXPECT_TRUE(spm.add_bos());
  EXPECT_EQ(spm.piece(15043), "\xE2\x96\x81Hello");
  EXPECT_EQ(spm.token_bytes(15043), " Hello");
  EXPECT_EQ(spm.token_bytes(13), "\n");  // <0x0A>
  EXPECT_EQ(spm.token_type(13), GgufTokenType::Byte);

  const GgufTokenizer llama3 = load("llama-bpe");
  EXPECT_FALSE(llama3.is_sentencepiece());
  EXPECT_EQ(llama3.pre(), "llama-bpe");
  EXPECT_EQ(llama3.vocab_size(), 128256);
  EXPECT_EQ(llama3.bos_id(), 128000);
  EXPECT_EQ(llama3.eos_id(), 128001);
  EXPECT_TRUE(llama3.add_bos());  // llama.cpp's default for Llama 3's pre-tokenizer
  EXPECT_EQ(llama3.piece(22691), "\xC4\xA0Hello");  // "ĠHello"
  EXPECT_EQ(llama3.token_bytes(22691), " Hello");

  const GgufTokenizer gpt2 = load("gpt-2");
  EXPECT_FALSE(gpt2.add_bos());
  EXPECT_EQ(gpt2.eos_id(), 50256);
}

// What llama.cpp's prompts get: BOS where add_bos_token, control tokens written in the text
// read as themselves (parse_special), and the sentencepiece space after each of them.
TEST(GgufTokenizer, EncodesPromptsAsLlamaCppDoes) {
  const GgufTokenizer spm = load("llama-spm");
  EXPECT_EQ(spm.encode_prompt("Hello world"), (std::vector<int32_t>{1, 15043, 3186}));
  EXPECT_EQ(spm.encode("<s>Hello</s>", true), (std::vector<int32_t>{1, 15043, 2}));
  const std::vector<int32_t> plain = spm.encode("<s>", false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0) << ids_text(plain);
  EXPECT_EQ(spm.decode(plain), "<s>");

  const GgufTokenizer llama3 = load("llama-bpe");
  EXPECT_EQ(llama3.encode_prompt("Hello world"), (std::vector<int32_t>{128000, 9906, 1917}));
  EXPECT_EQ(llama3.encode("<|eot_id|> Hello", true), (std::vector<int32_t>{128009, 22691}));
  const std::vector<int32_t> literal = llama3.encode("<|eot_id|>", false);
  EXPECT_EQ(std::count(literal.begin(), literal.end(), 128009), 0) << ids_text(literal);
  EXPECT_EQ(llama3.decode(literal), "<|eot_id|>");

  const GgufTokenizer qwen2 = load("qwen2");
  EXPECT_FALSE(qwen2.add_bos());
  const std::vector<int32_t> chat = qwen2.encode_prompt("<|im_start|>user\nHi<|im_end|>");
  ASSERT_GE(chat.size(), 3u);
  EXPECT_EQ(chat.front(), 151644);
  EXPECT_EQ(chat.back(), 151645);
  EXPECT_EQ(qwen2.decode(chat), "<|im_start|>user\nHi<|im_end|>");
  EXPECT_EQ(qwen2.decode(chat, SpecialTokens::Skip), "user\nHi");
  // Turn ends are control tokens and end generation, as llama.cpp reads them, even where the
  // file says otherwise (Qwen2's "</s>" is a normal token there; llama.cpp gives 128247).
  EXPECT_TRUE(qwen2.ends_generation(151643));  // <|endoftext|>, EOS
  EXPECT_TRUE(qwen2.ends_generation(151645));  // <|im_end|>
  EXPECT_FALSE(qwen2.ends_generation(151644));
  EXPECT_EQ(qwen2.token_type(128247), GgufTokenType::Control);
  EXPECT_EQ(qwen2.encode("Hi</s>", true), (std::vector<int32_t>{13048, 128247}));
}

// Decoding token by token gives the sequence's text, also where a character spans tokens.
TEST(GgufTokenizer, DecodesPrefixesToPrefixes) {
  for (const char* name : {"llama-spm", "qwen2"}) {
    const GgufTokenizer t = load(name);
    const std::string text = " this is 🦙.cpp нещо на Български";
    const std::vector<int32_t> ids = t.encode(text);
    const std::string whole = t.decode(ids);
    EXPECT_EQ(whole, text) << name;
    for (size_t n = 1; n <= ids.size(); ++n) {
      const std::string prefix = t.decode(std::span(ids).first(n));
      EXPECT_TRUE(whole.starts_with(prefix)) << name << ": " << n << " tokens";
    }
  }
  const GgufTokenizer spm = load("llama-spm");
  EXPECT_EQ(spm.decode(std::vector<int32_t>{15043, 3186}), "Hello world");
  EXPECT_NE(error_of([&] { spm.decode(std::vector<int32_t>{32000}); }).find("32000"),
            std::string::npos);
}

// GPT-NeoX's vocabulary (OLMoE's): no pre-tokenizer named, so llama.cpp's "default"; its runs
// of spaces are user-defined tokens, matched before anything else.
TEST(GgufTokenizer, GptNeoxUserDefinedTokens) {
  const GgufTokenizer neox = load("gpt-neox");
  EXPECT_EQ(neox.pre(), "default");
  EXPECT_EQ(neox.encode(std::string(24, ' ')), (std::vector<int32_t>{50254}));
  const std::string code = "def f():\n        return 1\n";
  EXPECT_EQ(neox.decode(neox.encode(code)), code);
}

TEST(GgufTokenizer, FolderTokenizerHoldsIt) {
  const GgufFile file(vocab_path("llama-bpe"));
  const FolderTokenizer t = FolderTokenizer::from_gguf(file.header());
  ASSERT_NE(t.gguf(), nullptr);
  EXPECT_FALSE(t.is_sentencepiece());
  EXPECT_EQ(t.vocab_size(), 128256);
  EXPECT_EQ(t.bos_id(), 128000);
  EXPECT_EQ(t.eos_id(), 128001);
  EXPECT_EQ(t.encode("<|eot_id|>Hello"), (std::vector<int32_t>{128009, 9906}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{128000, 9906}), "Hello");
  EXPECT_EQ(t.piece(22691), " Hello");

  const GgufFile spm_file(vocab_path("llama-spm"));
  const FolderTokenizer spm = FolderTokenizer::from_gguf(spm_file.header());
  EXPECT_TRUE(spm.is_sentencepiece());
  EXPECT_EQ(spm.piece(15043), "\xE2\x96\x81Hello");
  EXPECT_EQ(spm.decode(spm.encode("Hello world")), "Hello world");
}

// ---- metadata written here: GPT-NeoX as OLMoE has it, and bad metadata ----

// GGUF metadata written key by key (no tensors), so that a test can leave out or spoil one.
class GgufMetadata {
 public:
  GgufMetadata& string(std::string_view key, std::string_view value) {
    head(key, GgufValueType::String).str(value);
    return *this;
  }
  GgufMetadata& strings(std::string_view key, const std::vector<std::string>& values) {
    array(key, GgufValueType::String, values.size());
    for (const std::string& v : values) str(v);
    return *this;
  }
  GgufMetadata& i32s(std::string_view key, const std::vector<int32_t>& values) {
    array(key, GgufValueType::I32, values.size());
    for (const int32_t v : values) put(v);
    return *this;
  }
  GgufMetadata& u32(std::string_view key, uint32_t value) {
    head(key, GgufValueType::U32).put(value);
    return *this;
  }
  // Every key of `header` but `except`, as it is there.
  GgufMetadata& copy(const GgufHeader& header, std::string_view except) {
    for (const auto& [key, value] : header.metadata()) {
      if (key == except) continue;
      if (value.is_array)
        array(key, value.element_type(),
              std::visit([](const auto& v) { return size_of(v); }, value.values));
      else
        head(key, value.element_type());
      std::visit([&](const auto& elements) { put_all(elements); }, value.values);
    }
    return *this;
  }
  // The header that parse_gguf reads from these bytes.
  GgufHeader header() const {
    GgufMetadata file;
    file.bytes_ = {'G', 'G', 'U', 'F'};
    file.put(uint32_t{3}).put(uint64_t{0}).put(count_);
    file.bytes_ += bytes_;
    return parse_gguf(std::as_bytes(std::span(file.bytes_)), "vocab.gguf");
  }

 private:
  template <typename T>
  GgufMetadata& put(T value) {
    bytes_.append(reinterpret_cast<const char*>(&value), sizeof value);
    return *this;
  }
  GgufMetadata& str(std::string_view s) {
    put(uint64_t{s.size()});
    bytes_ += s;
    return *this;
  }
  GgufMetadata& head(std::string_view key, GgufValueType type) {
    ++count_;
    return str(key).put(static_cast<uint32_t>(type));
  }
  void array(std::string_view key, GgufValueType element, uint64_t n) {
    head(key, GgufValueType::Array).put(static_cast<uint32_t>(element)).put(n);
  }
  template <typename V>
  static uint64_t size_of(const V& v) {
    if constexpr (std::is_same_v<V, std::monostate>)
      return 0;
    else
      return v.size();
  }
  template <typename V>
  void put_all(const V& elements) {
    if constexpr (!std::is_same_v<V, std::monostate>)
      for (const auto& e : elements) {
        using E = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<E, std::string>)
          str(e);
        else if constexpr (std::is_same_v<E, bool>)
          put(static_cast<uint8_t>(e));
        else
          put(e);
      }
  }
  std::string bytes_;
  uint64_t count_ = 0;
};

// llama.cpp's ids (llama_tokenize, add_special and parse_special false; its commit de3ff815)
// for the inputs of its tests above with GPT-NeoX's vocabulary, which has no cases of its own:
// with tokenizer.ggml.pre "olmo" (OLMoE's files), and without the key (llama.cpp's "default").
constexpr std::string_view kNeoxOlmoIds = R"(728 577 24142 2607
37515 18569 293

209
50276
50275
186
187
535
2756
186 187
12092 1533
24387 1533
12092 3645
24387 3645
24387 3645 2
12092 13 1533 2
24387 13 1533 2
436 310 22692 101 236 15 14161
88 27244 818 16853 16392 20505 4989 11917
32520 11514 1068 8713 38177 13396 3415 9925 12559 10453 1389
18081 211 18081 116 18081 230 39936 222 18081 226 39936 213 18081 233 18081 117 18081 242 39936 212 18081 242 18081 97 18081 116 18081 216 18081 212 18081 238 18081 216 39936 212 18081 220
14931 237 211 313 6320 10 49042 116 325 224 14931 223 106 171 118 226 313 34263 802 13511 261 32147 456 10 3384 239 216 313 7483 802 80 8020 326 556 697 1211 10669 10
12092
24387
50276 12092
50275 12092
50274 12092
50274 12092 187 50274 12092
313
187 426
8 8685
12092 13 340 8 455 2 1359 403 368 49042 212 3736 15367 41197 13610 19934 41869 21275 1012 1047 18795 40120 20422 241
18963 4672
20
1610
20084
26409
1610 20084
26409 1610
26409 20084
26409 26409
26409 1610 20084
36 6829 244 66 17721 35177 85
1262 2196
586 1744 33525 186 209 623 28910 187 50276 187 50275 187 50274 187 50273 187 14931 237 211 313 6320 10 49042 116 325 224 14931 223 106 171 118 226 313 34263 802 13511 261 32147 456 10 3384 239 216 22692 101 236 14931 101 236 495 5922 30057 495 20084 495 26409 30057 20084 495 26409 1610 495 26409 20084 495 15 20 495 537 20 495 1051 20 209 18081 211 18081 116 18081 230 39936 222 18081 226 39936 213 18081 233 18081 117 18081 242 39936 212 18081 242 18081 97 18081 116 18081 216 14931 235 212 3736 15367 41197 13610 19934 41869 21275 1012 1047 18795 40120 20422 241 16081 6877 12880 11514 1068 8713 38177 13396 3415 9925 12559 10453 1389 42011 35033 34842 11202 9739 9739 33021 18963 4672 25561 8220 309 1849 644 686 42618 344 434 627 13 686 1848 368 2119 32 686 46 417 2119 309 1833 1056 352 13 686 37 368 751 690 10331 32 844 8 31516 247 8 77 45
)";
constexpr std::string_view kNeoxDefaultIds = R"(728 209 21 209 8313 2607
37515 18569 293

209
50276
50275
186
187
535
2756
186 187
12092 1533
24387 1533
12092 3645
24387 3645
24387 3645 2
12092 13 1533 2
24387 13 1533 2
436 310 22692 101 236 15 14161
88 27244 209 24 16853 16392 20505 4989 11917
32520 11514 1068 8713 38177 13396 3415 9925 12559 10453 1389
18081 211 18081 116 18081 230 39936 222 18081 226 39936 213 18081 233 18081 117 18081 242 39936 212 18081 242 18081 97 18081 116 18081 216 18081 212 18081 238 18081 216 39936 212 18081 220
14931 237 211 209 9 6320 10 49042 116 325 224 14931 223 106 171 118 226 209 9 34263 802 13511 261 32147 456 10 3384 239 216 209 9 7483 802 80 8020 326 556 697 1211 10669 10
12092
24387
50276 12092
50275 12092
50274 12092
50274 12092 187 50274 12092
209 9
586 30
8 8685
12092 13 340 8 455 2 1359 403 368 49042 212 209 32 15367 41197 13610 19934 41869 21275 17015 30977 18 40120 20422 241
18963 4672
20
1610
20084
20084 20
20084 1610
20084 20084
20084 20084 20
20084 20084 1610
20084 20084 20084
36 6829 244 66 17721 35177 85
1262 2196
586 1744 33525 186 209 623 28910 187 50276 187 50275 187 50274 187 50273 187 14931 237 211 209 9 6320 10 49042 116 325 224 14931 223 106 171 118 226 209 9 34263 802 13511 261 32147 456 10 3384 239 216 22692 101 236 14931 101 236 209 20 209 1610 209 20084 209 20084 20 209 20084 1610 209 20084 20084 209 20084 20084 20 209 20084 20084 1610 209 20 15 20 209 20 537 20 209 20 1051 20 209 18081 211 18081 116 18081 230 39936 222 18081 226 39936 213 18081 233 18081 117 18081 242 39936 212 18081 242 18081 97 18081 116 18081 216 14931 235 212 209 32 15367 41197 13610 19934 41869 21275 17015 30977 18 40120 20422 241 209 4485 6877 12880 11514 1068 8713 38177 13396 3415 9925 12559 10453 1389 209 6267 6267 6267 34842 11202 9739 9739 33021 18963 4672 25561 8220 309 8 306 644 209 8 42618 344 8 84 627 13 209 8 1848 368 2119 32 209 8 46 417 2119 309 8 620 1056 352 13 209 8 37 368 751 690 10331 32 844 8 31516 247 8 77 45
)";

void expect_ids(const GgufTokenizer& tokenizer, std::string_view expected_lines,
                const std::string& what) {
  std::vector<Case> cases = read_cases(vocab_path("llama-bpe"));
  std::istringstream lines{std::string(expected_lines)};
  size_t i = 0, matched = 0;
  for (std::string line; std::getline(lines, line) && i < cases.size(); ++i) {
    std::istringstream ids(line);
    std::vector<int32_t> expected;
    for (int32_t id; ids >> id;) expected.push_back(id);
    const std::vector<int32_t> got = tokenizer.encode(cases[i].input);
    if (got == expected)
      ++matched;
    else
      ADD_FAILURE() << what << ": '" << cases[i].input << "'\n  llama.cpp: " << ids_text(expected)
                    << "\n  here:      " << ids_text(got);
    EXPECT_EQ(tokenizer.decode(got), cases[i].input) << what;
  }
  std::printf("%s: %zu of %zu cases give llama.cpp's ids\n", what.c_str(), matched, cases.size());
  EXPECT_EQ(i, cases.size());
  EXPECT_EQ(matched, cases.size());
}

TEST(GgufTokenizerLlamaCpp, GptNeoxAsOlmo) {
  const GgufFile neox(vocab_path("gpt-neox"));
  GgufMetadata olmo;
  olmo.copy(neox.header(), "tokenizer.ggml.pre").string("tokenizer.ggml.pre", "olmo");
  const GgufTokenizer tokenizer(olmo.header());
  EXPECT_EQ(tokenizer.pre(), "olmo");
  expect_ids(tokenizer, kNeoxOlmoIds, "gpt-neox as olmo");
}

TEST(GgufTokenizerLlamaCpp, GptNeoxDefault) {
  const GgufTokenizer tokenizer = load("gpt-neox");
  EXPECT_EQ(tokenizer.pre(), "default");
  expect_ids(tokenizer, kNeoxDefaultIds, "gpt-neox, default pre-tokenizer");
}

// A byte-level vocabulary small enough to write out: the 256 byte tokens, "ab", "abc".
GgufMetadata small_gpt2(bool with_merges = true) {
  std::vector<std::string> tokens;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    // GPT-2's printable stand-ins: the printable Latin-1 bytes themselves, the rest U+0100...
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    tokens.push_back(s);
  }
  tokens.push_back("ab");
  tokens.push_back("abc");
  tokens.push_back("<|endoftext|>");
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  GgufMetadata m;
  m.string("tokenizer.ggml.model", "gpt2")
      .string("tokenizer.ggml.pre", "gpt-2")
      .strings("tokenizer.ggml.tokens", tokens)
      .i32s("tokenizer.ggml.token_type", types)
      .u32("tokenizer.ggml.eos_token_id", 258);
  if (with_merges) m.strings("tokenizer.ggml.merges", {"a b", "ab c"});
  return m;
}

TEST(GgufTokenizerBadMetadata, SmallVocabularyWorks) {
  const GgufTokenizer t(small_gpt2().header());
  EXPECT_EQ(t.encode("abc ab"), (std::vector<int32_t>{257, 32, 256}));
  EXPECT_EQ(t.encode("abc<|endoftext|>", true), (std::vector<int32_t>{257, 258}));
  EXPECT_EQ(t.eos_id(), 258);
}

TEST(GgufTokenizerBadMetadata, RefusedInOneLine) {
  const auto error = [](const GgufMetadata& m) {
    return error_of([&] { GgufTokenizer t(m.header()); });
  };
  const auto expect_error = [&](const GgufMetadata& m, std::vector<std::string> parts) {
    const std::string e = error(m);
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    EXPECT_TRUE(e.starts_with("vocab.gguf: ")) << e;
    for (const std::string& part : parts) EXPECT_NE(e.find(part), std::string::npos) << e;
  };
  expect_error(GgufMetadata().string("tokenizer.ggml.model", "llama"),
               {"'tokenizer.ggml.tokens' is missing"});
  expect_error(GgufMetadata(), {"'tokenizer.ggml.model' is missing"});
  expect_error(small_gpt2(false), {"'tokenizer.ggml.merges' is missing"});
  expect_error(GgufMetadata().string("tokenizer.ggml.model", "bert"),
               {"'bert'", "supported: llama, gpt2"});
  GgufMetadata unknown_pre;
  unknown_pre.string("tokenizer.ggml.model", "gpt2")
      .string("tokenizer.ggml.pre", "tekken")
      .strings("tokenizer.ggml.tokens", {"a"})
      .strings("tokenizer.ggml.merges", {});
  expect_error(unknown_pre, {"'tokenizer.ggml.pre' is 'tekken'", "gpt-2", "qwen2", "olmo",
                             "llama-bpe", "default"});
  expect_error(small_gpt2().u32("tokenizer.ggml.bos_token_id", 259),
               {"'tokenizer.ggml.bos_token_id' is 259", "outside the vocabulary of 259"});
  GgufMetadata bad_merge = small_gpt2(false);
  bad_merge.strings("tokenizer.ggml.merges", {"a b", "ab d"});
  expect_error(bad_merge, {"'tokenizer.ggml.merges'[1] 'ab d'", "'abd'"});
  GgufMetadata twice;
  twice.string("tokenizer.ggml.model", "llama").strings("tokenizer.ggml.tokens", {"x", "y", "x"});
  expect_error(twice, {"'x' twice (ids 0 and 2)"});
  GgufMetadata short_types;
  short_types.string("tokenizer.ggml.model", "llama")
      .strings("tokenizer.ggml.tokens", {"<unk>", "a"})
      .i32s("tokenizer.ggml.token_type", {2});
  expect_error(short_types, {"'tokenizer.ggml.token_type' has 1 entries for 2 tokens"});
  GgufMetadata bad_byte;
  bad_byte.string("tokenizer.ggml.model", "llama")
      .strings("tokenizer.ggml.tokens", {"<unk>", "<0xZZ>"})
      .i32s("tokenizer.ggml.token_type", {2, 6});
  expect_error(bad_byte, {"token 1 '<0xZZ>'", "not <0xXX>"});
}

}  // namespace
}  // namespace moe
