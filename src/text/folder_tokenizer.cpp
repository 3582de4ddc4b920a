#include "text/folder_tokenizer.h"

#include <filesystem>

#include "tensor/error.h"

namespace moe {

FolderTokenizer FolderTokenizer::open(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::exists(dir + "/tokenizer.model", ec))
    return FolderTokenizer(Tokenizer(dir + "/tokenizer.model"));
  if (std::filesystem::exists(dir + "/tokenizer.json", ec))
    return FolderTokenizer(BpeTokenizer(dir + "/tokenizer.json"));
  throw Error(dir + ": no tokenizer.model or tokenizer.json");
}

FolderTokenizer FolderTokenizer::from_gguf(const GgufHeader& header) {
  return FolderTokenizer(GgufTokenizer(header));
}

std::vector<int32_t> FolderTokenizer::encode(std::string_view text) const {
  if (const auto* g = gguf()) return g->encode(text, /*parse_special=*/true);
  return std::visit([&](const auto& t) { return t.encode(text); }, impl_);
}

std::string FolderTokenizer::decode(std::span<const int32_t> ids) const {
  if (const auto* g = gguf()) return g->decode(ids, SpecialTokens::Skip);
  return std::visit([&](const auto& t) { return t.decode(ids); }, impl_);
}

std::string FolderTokenizer::piece(int32_t id) const {
  if (const auto* sp = std::get_if<Tokenizer>(&impl_)) return sp->piece(id);
  if (const auto* g = gguf()) return g->is_sentencepiece() ? g->piece(id) : g->token_bytes(id);
  const int32_t one[] = {id};
  return std::get<BpeTokenizer>(impl_).decode(one);
}

int32_t FolderTokenizer::vocab_size() const {
  return std::visit([](const auto& t) { return t.vocab_size(); }, impl_);
}

int32_t FolderTokenizer::eos_id() const {
  if (const auto* sp = std::get_if<Tokenizer>(&impl_)) return sp->eos_id();
  if (const auto* g = gguf()) return g->eos_id();
  return std::get<BpeTokenizer>(impl_).eos_id().value_or(-1);
}

int32_t FolderTokenizer::bos_id() const {
  if (const auto* sp = std::get_if<Tokenizer>(&impl_)) return sp->bos_id();
  if (const auto* g = gguf()) return g->bos_id();
  return -1;
}

bool FolderTokenizer::is_sentencepiece() const {
  if (const auto* g = gguf()) return g->is_sentencepiece();
  return std::holds_alternative<Tokenizer>(impl_);
}

}  // namespace moe
