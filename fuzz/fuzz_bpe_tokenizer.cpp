// libFuzzer: the tokenizer.json reader (train/bpe_tokenizer). The input is split at
// "\n--moe-file--\n" into tokenizer.json, tokenizer_config.json and a text (missing parts are
// empty). Loading must give a tokenizer or throw moe::Error; a loaded tokenizer must encode
// the text (or refuse it with moe::Error: not UTF-8, a regex over its match limit) into ids
// inside its vocabulary, each of which decodes; never crash, hang or over-allocate.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "tensor/error.h"
#include "text/bpe_tokenizer.h"

namespace {
constexpr std::string_view kSeparator = "\n--moe-file--\n";

std::string_view take_part(std::string_view& input) {
  const size_t cut = input.find(kSeparator);
  const std::string_view part = input.substr(0, cut);
  input =
      cut == std::string_view::npos ? std::string_view() : input.substr(cut + kSeparator.size());
  return part;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::string_view tokenizer_json = take_part(input);
  const std::string_view config_json = take_part(input);
  const std::string_view text = take_part(input);
  std::optional<moe::BpeTokenizer> tok;
  try {
    tok.emplace(tokenizer_json, config_json, "fuzz/tokenizer.json");
  } catch (const moe::Error&) {
    return 0;
  }
  if (tok->vocab_size() <= 0) __builtin_trap();
  if (const auto eos = tok->eos_id(); eos && (*eos < 0 || *eos >= tok->vocab_size()))
    __builtin_trap();
  std::vector<int32_t> ids;
  try {
    ids = tok->encode(text);
  } catch (const moe::Error&) {
    return 0;
  }
  for (const int32_t id : ids)
    if (id < 0 || id >= tok->vocab_size()) __builtin_trap();
  tok->decode(ids);  // every id encode gives decodes: a throw here is a finding
  tok->decode(ids, moe::SpecialTokens::Skip);
  return 0;
}
