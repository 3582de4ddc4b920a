// BpeTokenizer (text/bpe_tokenizer.h): Hugging Face tokenizer.json byte-level BPE.
// tests/reference/bpe_reference.py (run first, a ctest fixture) builds three small tokenizers
// the way GPT-2's was built, in the forms GPT-2, Qwen2 and Llama-3 ship, and encodes a set of
// strings with a plain-Python encoder written from the published algorithm. Our ids must equal
// its ids exactly, and decode(encode(s)) must give s back (NFC(s) where the tokenizer
// declares the NFC normalizer). The other tests are hand-made tokenizers and error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"
#include "text/bpe_tokenizer.h"

namespace moe {
namespace {

using nlohmann::json;
using test::error_of;

const std::string kReferenceDir = std::string(MOE_REFERENCE_DIR) + "/bpe";

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("cannot open " + path + " (run the reference.generate_bpe test)");
  return json::parse(in);
}

std::string fixture(const std::string& form) {
  return kReferenceDir + "/" + form + "/tokenizer.json";
}

class ReferenceIds : public testing::TestWithParam<std::string> {};

TEST_P(ReferenceIds, MatchThePythonEncoderAndRoundTrip) {
  const std::string form = GetParam();
  const BpeTokenizer tok(fixture(form));
  const json cases = read_json(kReferenceDir + "/bpe_expected.json").at(form);
  ASSERT_GE(cases.size(), 20u);
  for (const json& c : cases) {
    const std::string text = c.at("text");
    const std::vector<int32_t> expected = c.at("ids");
    const std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(ids, expected) << form << ": " << json(text).dump();
    EXPECT_EQ(tok.decode(ids), c.at("decoded").get<std::string>())
        << form << ": " << json(text).dump();
    for (const int32_t id : ids) EXPECT_TRUE(id >= 0 && id < tok.vocab_size());
  }
}

INSTANTIATE_TEST_SUITE_P(Forms, ReferenceIds, testing::Values("gpt2", "qwen2", "llama3"));

TEST(BpeTokenizer, AModelWithMergesAndNoTypeIsBpe) {
  json j = read_json(fixture("gpt2"));
  const BpeTokenizer typed(j.dump(), "", "typed.json");
  j["model"].erase("type");
  const BpeTokenizer untyped(j.dump(), "", "untyped.json");
  EXPECT_EQ(untyped.encode("The quick brown fox"), typed.encode("The quick brown fox"));
}

TEST(BpeTokenizer, EosFromTheConfigElseAnEndOfTextSpecialToken) {
  const BpeTokenizer qwen(fixture("qwen2"));  // tokenizer_config.json: eos_token <|im_end|>
  ASSERT_TRUE(qwen.eos_id().has_value());
  EXPECT_EQ(qwen.eos_id(), qwen.token_id("<|im_end|>"));
  EXPECT_NE(qwen.eos_id(), qwen.token_id("<|endoftext|>"));
  const BpeTokenizer gpt2(fixture("gpt2"));  // no tokenizer_config.json
  ASSERT_TRUE(gpt2.eos_id().has_value());
  EXPECT_EQ(gpt2.eos_id(), gpt2.token_id("<|endoftext|>"));
  const BpeTokenizer llama(fixture("llama3"));
  EXPECT_EQ(llama.eos_id(), llama.token_id("<|end_of_text|>"));
}

TEST(BpeTokenizer, SpecialTokensAreMarkedAndCanBeSkippedInDecode) {
  const BpeTokenizer tok(fixture("gpt2"));
  const int32_t eot = *tok.token_id("<|endoftext|>");
  const int32_t four_spaces = *tok.token_id("    ");  // an added token, not special
  EXPECT_TRUE(tok.is_special(eot));
  EXPECT_TRUE(tok.is_special(*tok.token_id("<mask>")));
  EXPECT_FALSE(tok.is_special(four_spaces));
  EXPECT_FALSE(tok.is_special(*tok.token_id("a")));
  EXPECT_FALSE(tok.is_special(-1));
  EXPECT_FALSE(tok.is_special(tok.vocab_size()));
  EXPECT_EQ(tok.vocab_size(), *tok.token_id("    ") + 1);  // the last added token

  const std::vector<int32_t> ids = tok.encode("Hello<|endoftext|>world    x");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), eot), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), four_spaces), 1);
  EXPECT_EQ(tok.decode(ids), "Hello<|endoftext|>world    x");
  EXPECT_EQ(tok.decode(ids, SpecialTokens::Skip), "Helloworld    x");
}

TEST(BpeTokenizer, TokenByTokenDecodesConcatenateToTheWhole) {
  const BpeTokenizer tok(fixture("qwen2"));
  const std::string text = "emoji 👨‍👩‍👧 and 中文, split across byte tokens";
  std::string streamed;
  for (const int32_t id : tok.encode(text)) streamed += tok.decode(std::span(&id, 1));
  EXPECT_EQ(streamed, text);
}

TEST(BpeTokenizer, LongRunsEncodeAndRoundTrip) {
  const BpeTokenizer gpt2(fixture("gpt2"));
  const BpeTokenizer qwen(fixture("qwen2"));
  for (const std::string& text : {std::string(100000, ' '), std::string(100000, 'a'),
                                  std::string(30000, '7'), "x" + std::string(50000, '\n') + "y"}) {
    EXPECT_EQ(gpt2.decode(gpt2.encode(text)), text);
    EXPECT_EQ(qwen.decode(qwen.encode(text)), text);
  }
}

// GPT-2's byte-level form of `text`: bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF as the code points
// of the same number, the others as 256, 257, ... in byte order.
std::string byte_mapped(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const int b = static_cast<uint8_t>(c);
    int cp = b;
    if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
      cp = 256;
      for (int k = 0; k < b; ++k) cp += !((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC));
    }
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

// A tokenizer.json of the 256 byte tokens (ids in byte order), the words of `extra` after
// them, the given pre-tokenizer and merges, and ignore_merges: a piece in the vocabulary is
// one token.
json byte_tokenizer(const std::vector<std::string>& extra, const json& pre_tokenizer,
                    const json& merges = json::array()) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_mapped(std::string(1, static_cast<char>(b)))] = b;
  for (const std::string& e : extra)
    if (!vocab.contains(byte_mapped(e))) vocab[byte_mapped(e)] = static_cast<int>(vocab.size());
  return {
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tokenizer},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", true}}}};
}

json split_then_byte_level(const json& pattern, const char* behavior, bool invert) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}},
            {{"type", "ByteLevel"}, {"use_regex", false}}}}};
}

// The pieces a tokenizer cuts `text` into: with ignore_merges and every expected piece in
// the vocabulary, each piece is one token.
std::vector<std::string> pieces(const BpeTokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (const int32_t id : tok.encode(text)) out.push_back(tok.decode(std::span(&id, 1)));
  return out;
}

TEST(BpeTokenizer, SplitBehavioursCutAsTokenizersDocumentsThem) {
  // tokenizers' documentation: "the-final--countdown" split on "-".
  const std::vector<std::string> words = {"the-", "final-", "-final", "-countdown",
                                          "--",   "the",    "final",  "countdown"};
  const auto split = [&](const char* behavior, bool invert) {
    const json pre = split_then_byte_level({{"String", "-"}}, behavior, invert);
    return pieces(BpeTokenizer(byte_tokenizer(words, pre).dump(), "", "split.json"),
                  "the-final--countdown");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Removed", false), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated", false), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious", false), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext", false), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous", false), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split("Removed", true), (V{"-", "-", "-"}));  // inverted: the words are removed
}

TEST(BpeTokenizer, RegexWhiteSpaceIsUnicodeWhiteSpaceAsInOniguruma) {
  // U+180E MONGOLIAN VOWEL SEPARATOR left White_Space in Unicode 6.3 (PCRE2's own \s still
  // takes it); U+2003 EM SPACE is White_Space.
  const std::string text = "a\u180eb\u2003c d";
  const std::vector<std::string> words = {"a\u180eb", "c", "d", "\u2003", " "};
  const auto split = [&](const char* regex) {
    const json pre = split_then_byte_level({{"Regex", regex}}, "Removed", false);
    return pieces(BpeTokenizer(byte_tokenizer(words, pre).dump(), "", "ws.json"), text);
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split("\\s+"), (V{"a\u180eb", "c", "d"}));
  EXPECT_EQ(split("[^\\s]+"), (V{"\u2003", " "}));
  EXPECT_EQ(split("\\S+"), (V{"\u2003", " "}));
  EXPECT_EQ(split("[\\s\\p{N}]+"), (V{"a\u180eb", "c", "d"}));
}

TEST(BpeTokenizer, AddPrefixSpaceAppliesToEachPieceBetweenAddedTokens) {
  json j = read_json(fixture("gpt2"));
  const BpeTokenizer plain(j.dump(), "", "gpt2.json");
  j["pre_tokenizer"]["add_prefix_space"] = true;
  const BpeTokenizer prefixed(j.dump(), "", "gpt2_prefix.json");
  EXPECT_EQ(prefixed.encode("Hello world"), plain.encode(" Hello world"));
  EXPECT_EQ(prefixed.encode(" Hello"), plain.encode(" Hello"));  // already has one
  std::vector<int32_t> expected = plain.encode(" a");
  expected.push_back(*plain.token_id("<|endoftext|>"));
  for (const int32_t id : plain.encode(" b")) expected.push_back(id);
  EXPECT_EQ(prefixed.encode("a<|endoftext|>b"), expected);
}

TEST(BpeTokenizer, AddedTokenOptionsStripAndSingleWord) {
  json j = read_json(fixture("gpt2"));
  const int32_t next_id = BpeTokenizer(j.dump(), "", "gpt2.json").vocab_size();
  j["added_tokens"].push_back({{"id", next_id},
                               {"content", "[R]"},
                               {"rstrip", true},
                               {"special", true},
                               {"normalized", false}});
  j["added_tokens"].push_back({{"id", next_id + 1},
                               {"content", "cat"},
                               {"single_word", true},
                               {"special", false},
                               {"normalized", true}});
  const BpeTokenizer tok(j.dump(), "", "options.json");
  const std::vector<int32_t> r = tok.encode("x[R]  y");
  ASSERT_GE(r.size(), 3u);
  EXPECT_EQ(r[1], next_id);
  EXPECT_EQ(tok.decode(std::span(r).subspan(2)), "y");  // the spaces went into [R]'s match
  const auto count_cat = [&](const std::string& text) {
    const auto ids = tok.encode(text);
    return std::count(ids.begin(), ids.end(), next_id + 1);
  };
  EXPECT_EQ(count_cat("a cat sat"), 1);
  EXPECT_EQ(count_cat("cat"), 1);
  EXPECT_EQ(count_cat("concatenate cats"), 0);  // inside words: not a match
  EXPECT_EQ(count_cat("cat! (cat)"), 2);
  // Rust's \w: letters, marks, digits, connector punctuation
  EXPECT_EQ(count_cat("cat\u0301 cat_ 7cat \u00e9cat"), 0);
}

TEST(BpeTokenizer, UnknownBytesAreDroppedOrMappedToTheUnkToken) {
  json j = {{"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", false}}},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model",
             {{"type", "BPE"},
              {"vocab", {{"a", 0}, {"b", 1}, {"<unk>", 2}, {"ab", 3}}},
              {"merges", {"a b"}}}}};
  EXPECT_EQ(BpeTokenizer(j.dump(), "", "t.json").encode("aXYab"),
            (std::vector<int32_t>{0, 3}));  // no unk_token: dropped, as tokenizers does
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(BpeTokenizer(j.dump(), "", "t.json").encode("aXYab"),
            (std::vector<int32_t>{0, 2, 2, 3}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(BpeTokenizer(j.dump(), "", "t.json").encode("aXYab"), (std::vector<int32_t>{0, 2, 3}));
}

TEST(BpeTokenizer, BadInputIsOneLineNamingTheFileAndField) {
  const std::string dir = test::temp_dir("bpe_errors");
  const json good = read_json(fixture("gpt2"));
  const auto error_for = [&](const json& j) {
    return error_of([&] { BpeTokenizer(j.dump(), "", dir + "/tokenizer.json"); });
  };
  const auto with = [&](const std::function<void(json&)>& change) {
    json j = good;
    change(j);
    return error_for(j);
  };
  std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {error_of([&] { BpeTokenizer(dir + "/missing/tokenizer.json"); }),
       {"missing/tokenizer.json", "cannot open"}},
      {error_of([&] { BpeTokenizer("{\"model\": [1, 2", "", dir + "/tokenizer.json"); }),
       {"not valid JSON"}},
      {with([](json& j) { j["model"]["type"] = "WordPiece"; }), {"model.type", "WordPiece"}},
      {with([](json& j) {
         j["model"].erase("type");
         j["model"].erase("merges");
       }),
       {"model.type", "missing"}},
      {with([](json& j) { j["pre_tokenizer"]["type"] = "Whitespace"; }),
       {"pre_tokenizer.type", "Whitespace"}},
      {with([](json& j) { j["pre_tokenizer"] = nullptr; }), {"pre_tokenizer", "ByteLevel"}},
      {with([](json& j) { j["decoder"]["type"] = "WordPiece"; }), {"decoder.type", "WordPiece"}},
      {with([](json& j) {
         j["normalizer"] = {{"type", "Lowercase"}};
       }),
       {"normalizer.type", "Lowercase"}},
      {with([](json& j) { j["model"]["merges"][0] = "zz\u00e9 a"; }),
       {"model.merges[0]", "zz\u00e9", "not in model.vocab"}},
      {with([](json& j) { j["model"]["merges"][3] = "a b c"; }), {"model.merges[3]", "one space"}},
      {with([](json& j) { j["model"]["merges"][4] = "a\nb"; }), {"model.merges[4]", "'a\\nb'"}},
      {with([](json& j) {
         j["model"]["merges"][2] = json::array({"a", 7});
       }),
       {"model.merges[2][1]", "string"}},
      {with([](json& j) { j["model"]["vocab"]["a"] = -3; }), {"model.vocab['a']", "token id"}},
      {with([](json& j) { j["model"]["vocab"]["b"] = j["model"]["vocab"]["a"]; }),
       {"model.vocab", "both"}},
      {with([](json& j) { j["model"]["dropout"] = 0.1; }), {"model.dropout"}},
      {with([](json& j) { j["added_tokens"][0]["id"] = j["model"]["vocab"]["a"]; }),
       {"added_tokens[0].id", "model.vocab's 'a'"}},
      {with([](json& j) { j["added_tokens"][1]["id"] = j["added_tokens"][0]["id"]; }),
       {"added_tokens[1].id", "<|endoftext|>"}},
      {with([](json& j) { j["added_tokens"][0]["content"] = ""; }),
       {"added_tokens[0].content", "empty"}},
      {with([](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"}, {"pattern", {{"Regex", "(\\p{L}"}}}, {"behavior", "Isolated"}},
               {{"type", "ByteLevel"}, {"use_regex", false}}}}};
       }),
       {"pre_tokenizer.pretokenizers[0].pattern.Regex", "regex"}},
      {with([](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "ByteLevel"}},
               {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", "Isolated"}}}}};
       }),
       {"pre_tokenizer.pretokenizers[1]", "must come last"}},
  };
  {
    json deep = {{"type", "ByteLevel"}};
    for (int i = 0; i < 40; ++i) deep = {{"type", "Sequence"}, {"pretokenizers", {deep}}};
    cases.push_back({with([&](json& j) { j["pre_tokenizer"] = deep; }), {"nested more than 16"}});
  }
  // The merge "a b" of the fixture: its merged token removed from the vocabulary.
  {
    json j = good;
    const std::string first = j["model"]["merges"][0];
    const std::string merged = first.substr(0, first.find(' ')) + first.substr(first.find(' ') + 1);
    j["model"]["vocab"].erase(merged);
    cases.push_back({error_for(j), {"model.merges[0] (the merged token)", merged}});
  }
  // tokenizer_config.json naming an eos_token that is not a token.
  {
    const std::string folder = test::temp_dir("bpe_config");
    std::ofstream(folder + "/tokenizer.json") << good.dump();
    std::ofstream(folder + "/tokenizer_config.json") << R"({"eos_token": {"content": "</eos>"}})";
    cases.push_back({error_of([&] { BpeTokenizer(folder + "/tokenizer.json"); }),
                     {"tokenizer_config.json", "eos_token", "</eos>"}});
  }
  for (const auto& [message, parts] : cases) {
    ASSERT_FALSE(message.empty()) << "no error for the case naming " << parts[0];
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_NE(message.find(".json: "), std::string::npos) << "no file named: " << message;
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  }

  const BpeTokenizer tok(fixture("gpt2"));
  const std::vector<int32_t> bad_ids[] = {{5, -1}, {tok.vocab_size()}};
  for (const auto& ids : bad_ids) {
    const std::string e = error_of([&] { tok.decode(ids); });
    EXPECT_NE(e.find("token id"), std::string::npos) << e;
    EXPECT_NE(e.find(fixture("gpt2")), std::string::npos) << e;
  }
  const std::string e = error_of([&] { tok.encode("ok \xC3\x28 bad"); });
  EXPECT_NE(e.find("UTF-8 (byte 3)"), std::string::npos) << e;
}

}  // namespace
}  // namespace moe
