#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {
namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', '1', '\0'};
struct TokenHeader {
  char magic[8];
  uint32_t vocab;
  uint32_t bytes_per_token;
  uint64_t count;
};
static_assert(sizeof(TokenHeader) == 24);

}  // namespace

std::vector<Document> read_corpus(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Error("cannot open corpus '" + path + "'");
  std::string content;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) content.append(buf, static_cast<size_t>(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string why = err != Z_OK && err != Z_STREAM_END ? msg : "";
  gzclose(f);
  if (n < 0 || !why.empty()) throw Error("corpus '" + path + "': " + why + " (truncated?)");

  std::vector<Document> docs;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    ++line;
    const std::string_view text(content.data() + pos, end - pos);
    pos = end + 1;
    if (text.empty()) continue;
    const std::string where = "corpus '" + path + "' line " + std::to_string(line);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + ": " + e.what());
    }
    Document d;
    for (const char* key : {"domain", "source", "split", "text"})
      if (!j.contains(key) || !j[key].is_string())
        throw Error(where + ": field '" + key + "' must be a string");
    d.domain = j["domain"];
    d.source = j["source"];
    d.split = j["split"];
    d.text = j["text"];
    if (d.split != "train" && d.split != "valid")
      throw Error(where + ": split must be \"train\" or \"valid\", got \"" + d.split + "\"");
    docs.push_back(std::move(d));
  }
  if (docs.empty()) throw Error("corpus '" + path + "' holds no documents");
  return docs;
}

void write_token_file(const std::string& path, std::span<const int32_t> tokens, int32_t vocab) {
  if (vocab > 65536) throw Error("token file: vocabularies above 65536 are not supported");
  TokenHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.vocab = static_cast<uint32_t>(vocab);
  h.bytes_per_token = 2;
  h.count = tokens.size();
  std::vector<uint16_t> packed(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw Error("token file '" + path + "': id " + std::to_string(tokens[i]) +
                  " outside the vocabulary");
    packed[i] = static_cast<uint16_t>(tokens[i]);
  }
  AtomicFile f(path);
  f.write(&h, sizeof h);
  f.write(packed.data(), packed.size() * sizeof(uint16_t));
  f.commit();
}

void build_token_files(const std::vector<Document>& docs, const Tokenizer& tokenizer,
                       const std::string& dir) {
  std::vector<int32_t> streams[2];  // train, valid
  std::string index;
  // Tokenise in parallel, then concatenate in corpus order.
  std::vector<std::vector<int32_t>> encoded(docs.size());
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < docs.size(); ++i) encoded[i] = tokenizer.encode(docs[i].text);
  for (size_t i = 0; i < docs.size(); ++i) {
    auto& s = streams[docs[i].split == "valid" ? 1 : 0];
    const int64_t begin = static_cast<int64_t>(s.size());
    s.insert(s.end(), encoded[i].begin(), encoded[i].end());
    s.push_back(tokenizer.eos_id());
    index += nlohmann::json{{"split", docs[i].split},
                            {"domain", docs[i].domain},
                            {"source", docs[i].source},
                            {"begin", begin},
                            {"end", static_cast<int64_t>(s.size())}}
                 .dump() +
             "\n";
  }
  write_token_file(dir + "/train.tokens", streams[0], tokenizer.vocab_size());
  write_token_file(dir + "/valid.tokens", streams[1], tokenizer.vocab_size());
  write_file_atomic(dir + "/documents.jsonl", index);
}

TokenStream::TokenStream(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open token file '" + path + "'");
  struct stat st {};
  ::fstat(fd, &st);
  const size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes < sizeof(TokenHeader)) {
    ::close(fd);
    throw Error("token file '" + path + "' is shorter than its header");
  }
  map_ = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error("cannot map token file '" + path + "'");
  }
  map_bytes_ = bytes;
  TokenHeader h;
  std::memcpy(&h, map_, sizeof h);
  if (std::memcmp(h.magic, kMagic, 8) != 0 || h.bytes_per_token != 2 ||
      h.count != (bytes - sizeof h) / 2 || (bytes - sizeof h) % 2 != 0) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw Error("token file '" + path + "': header does not match the file (" +
                std::to_string(bytes) + " bytes)");
  }
  tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map_) + sizeof h);
  count_ = static_cast<int64_t>(h.count);
  vocab_ = static_cast<int32_t>(h.vocab);
}

TokenStream::~TokenStream() {
  if (map_) ::munmap(map_, map_bytes_);
}

void sample_batch(const TokenStream& stream, Rng& rng, int64_t batch, int64_t seq,
                  std::span<int32_t> tokens, std::span<int32_t> targets) {
  if (stream.size() < seq + 1)
    throw Error("training tokens (" + std::to_string(stream.size()) +
                ") are fewer than one sequence of " + std::to_string(seq + 1));
  const uint64_t starts = static_cast<uint64_t>(stream.size() - seq);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t o = static_cast<int64_t>(rng.next_u64() % starts);
    for (int64_t s = 0; s < seq; ++s) {
      tokens[b * seq + s] = stream[o + s];
      targets[b * seq + s] = stream[o + s + 1];
    }
  }
}

int64_t eval_windows(const TokenStream& stream, int64_t seq) {
  return stream.size() > 0 ? (stream.size() - 1) / seq : 0;
}

void eval_batch(const TokenStream& stream, int64_t first_window, int64_t batch, int64_t seq,
                std::span<int32_t> tokens, std::span<int32_t> targets) {
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t o = (first_window + b) * seq;
    for (int64_t s = 0; s < seq; ++s) {
      tokens[b * seq + s] = stream[o + s];
      targets[b * seq + s] = stream[o + s + 1];
    }
  }
}

}  // namespace moe
