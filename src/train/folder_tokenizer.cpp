#include "train/folder_tokenizer.h"

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

std::vector<int32_t> FolderTokenizer::encode(std::string_view text) const {
  return std::visit([&](const auto& t) { return t.encode(text); }, impl_);
}

std::string FolderTokenizer::decode(std::span<const int32_t> ids) const {
  return std::visit([&](const auto& t) { return t.decode(ids); }, impl_);
}

std::string FolderTokenizer::piece(int32_t id) const {
  if (const auto* sp = std::get_if<Tokenizer>(&impl_)) return sp->piece(id);
  const int32_t one[] = {id};
  return std::get<BpeTokenizer>(impl_).decode(one);
}

int32_t FolderTokenizer::vocab_size() const {
  return std::visit([](const auto& t) { return t.vocab_size(); }, impl_);
}

int32_t FolderTokenizer::eos_id() const {
  if (const auto* sp = std::get_if<Tokenizer>(&impl_)) return sp->eos_id();
  return std::get<BpeTokenizer>(impl_).eos_id().value_or(-1);
}

int32_t FolderTokenizer::bos_id() const {
  if (const auto* sp = std::get_if<Tokenizer>(&impl_)) return sp->bos_id();
  return -1;
}

}  // namespace moe
