#include "text/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tensor/atomic_file.h"
#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', '1', '\0'};
struct TokenHeader {
  char magic[8];
  uint32_t vocab;
  uint32_t bytes_per_token;
  uint64_t count;
};
static_assert(sizeof(TokenHeader) == 24);

// Plain-text corpora: every kValidEvery-th document of a domain is validation (as the shipped
// corpus's split).
constexpr size_t kValidEvery = 16;

// The bytes of a file, gunzipped when it is gzip (zlib passes other files through as they are).
std::string read_maybe_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Error("cannot open corpus file '" + path + "'");
  std::string content;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) content.append(buf, static_cast<size_t>(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string why = err != Z_OK && err != Z_STREAM_END ? msg : "";
  gzclose(f);
  if (n < 0 || !why.empty()) throw Error("corpus '" + path + "': " + why + " (truncated?)");
  return content;
}

// The shipped format: a file named *.jsonl or *.jsonl.gz, or one whose first line is a JSON
// object with a "text" field (a plain text that begins so is very unlikely).
bool is_jsonl_corpus(const std::string& path, std::string_view content) {
  if (path.ends_with(".jsonl") || path.ends_with(".jsonl.gz")) return true;
  const std::string_view first = content.substr(0, content.find('\n'));
  if (!first.starts_with('{')) return false;
  const nlohmann::json j = nlohmann::json::parse(first, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("text");
}

std::vector<Document> read_jsonl_corpus(const std::string& path, const std::string& content) {
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
      throw Error(where + ": " + json_error_text(e));
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
  return docs;
}

// Offset of the first byte that breaks UTF-8 (or is NUL), or npos when the text is clean.
size_t first_bad_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == 0) return i;
    size_t len = 0;
    uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      code = c & 0x07;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      code = (code << 6) | (cc & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t kSmallest[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kSmallest[len] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

// A plain-text file's contents, checked to be UTF-8 (a leading byte-order mark is dropped).
std::string checked_text(const std::string& path, std::string text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);
  require_utf8(text, "corpus file '" + path + "'");
  return text;
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\n\r\f\v") == std::string_view::npos;
}

// `a.txt` and `a.txt.gz` name the domain `a`.
std::string domain_of_file(const fs::path& file) {
  fs::path name = file.filename();
  if (name.extension() == ".gz") name = name.stem();
  return name.stem().string();
}

// Every 16th document of a domain is validation; a domain of 2 to 15 documents gives its last.
void split_by_document(std::vector<Document>& docs, size_t first) {
  const size_t n = docs.size() - first;
  for (size_t i = 0; i < n; ++i) {
    const bool valid =
        i % kValidEvery == kValidEvery - 1 || (n >= 2 && n < kValidEvery && i == n - 1);
    docs[first + i].split = valid ? "valid" : "train";
  }
}

// A plain-text file: documents are separated by blank lines. source = "path:line".
void read_text_documents(const fs::path& file, const std::string& domain, std::string content,
                         std::vector<Document>& docs) {
  const std::string text = checked_text(file.string(), std::move(content));
  std::string current;
  int64_t line_number = 0, start_line = 0;
  auto finish = [&] {
    if (current.empty()) return;
    docs.push_back({domain, file.string() + ":" + std::to_string(start_line), "", current});
    current.clear();
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (is_blank(line)) {
      finish();
      continue;
    }
    if (current.empty())
      start_line = line_number;
    else
      current += '\n';
    current += line.ends_with('\r') ? line.substr(0, line.size() - 1) : line;
  }
  finish();
}

// The files of a folder, hidden ones (".name") left out, sorted by path.
std::vector<fs::path> files_under(const fs::path& folder, bool recursive) {
  std::vector<fs::path> files;
  auto take = [&](const fs::directory_entry& e) {
    if (e.is_regular_file() && !e.path().filename().string().starts_with('.'))
      files.push_back(e.path());
  };
  if (recursive) {
    for (auto it = fs::recursive_directory_iterator(folder);
         it != fs::recursive_directory_iterator(); ++it) {
      if (it->is_directory() && it->path().filename().string().starts_with('.'))
        it.disable_recursion_pending();
      else
        take(*it);
    }
  } else {
    for (const auto& e : fs::directory_iterator(folder)) take(e);
  }
  std::sort(files.begin(), files.end());
  return files;
}

// A folder: each subfolder is a domain named after it, each file under it one document; files
// directly in the folder form a domain named after the folder.
std::vector<Document> read_text_folder(const fs::path& folder) {
  std::vector<Document> docs;
  auto add_domain = [&](const std::string& domain, const std::vector<fs::path>& files) {
    const size_t first = docs.size();
    for (const fs::path& file : files) {
      std::string text = checked_text(file.string(), read_maybe_gzip(file.string()));
      if (is_blank(text)) continue;
      docs.push_back({domain, file.string(), "", std::move(text)});
    }
    split_by_document(docs, first);
  };
  fs::path name = fs::absolute(folder).lexically_normal();
  if (!name.has_filename()) name = name.parent_path();  // "corpus/" names the domain "corpus"
  add_domain(name.filename().string(), files_under(folder, false));
  std::vector<fs::path> domains;
  for (const auto& e : fs::directory_iterator(folder))
    if (e.is_directory() && !e.path().filename().string().starts_with('.'))
      domains.push_back(e.path());
  std::sort(domains.begin(), domains.end());
  for (const fs::path& d : domains) add_domain(d.filename().string(), files_under(d, true));
  return docs;
}

}  // namespace

void require_utf8(std::string_view text, const std::string& what) {
  const size_t bad = first_bad_utf8(text);
  if (bad == std::string_view::npos) return;
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(text[bad]));
  throw Error(what + " is not UTF-8 text (byte " + std::to_string(bad) + " is " + byte + ")");
}

std::vector<Document> read_corpus(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Error("corpus '" + path + "' does not exist");
  std::vector<Document> docs;
  if (fs::is_directory(status)) {
    try {
      docs = read_text_folder(path);
    } catch (const fs::filesystem_error& e) {  // an unreadable subfolder, say
      throw Error("corpus '" + path + "': " + e.what());
    }
  } else if (std::string content = read_maybe_gzip(path); is_jsonl_corpus(path, content)) {
    docs = read_jsonl_corpus(path, content);
  } else {
    read_text_documents(path, domain_of_file(path), std::move(content), docs);
    split_by_document(docs, 0);
  }
  if (docs.empty()) throw Error("corpus '" + path + "' holds no documents");
  return docs;
}

namespace {

void write_packed_token_file(const std::string& path, std::span<const uint16_t> tokens,
                             int32_t vocab) {
  TokenHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.vocab = static_cast<uint32_t>(vocab);
  h.bytes_per_token = 2;
  h.count = tokens.size();
  AtomicFile f(path);
  f.write(&h, sizeof h);
  f.write(tokens.data(), tokens.size() * sizeof(uint16_t));
  f.commit();
}

}  // namespace

void write_token_file(const std::string& path, std::span<const int32_t> tokens, int32_t vocab) {
  if (vocab > 65536) throw Error("token file: vocabularies above 65536 are not supported");
  std::vector<uint16_t> packed(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw Error("token file '" + path + "': id " + std::to_string(tokens[i]) +
                  " outside the vocabulary");
    packed[i] = static_cast<uint16_t>(tokens[i]);
  }
  write_packed_token_file(path, packed, vocab);
}

bool build_token_files(const std::vector<Document>& docs, const Tokenizer& tokenizer,
                       const std::string& dir, const std::function<bool()>& document_done) {
  const int32_t vocab = tokenizer.vocab_size();
  if (vocab > 65536) throw Error("token file: vocabularies above 65536 are not supported");
  // Tokenise in parallel, then concatenate in corpus order, packed as the files hold them
  // (two bytes a token: the streams take half the memory of the ids).
  std::vector<std::vector<int32_t>> encoded(docs.size());
  std::atomic<bool> stopped{false};
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < docs.size(); ++i) {
    if (stopped.load(std::memory_order_relaxed)) continue;
    encoded[i] = tokenizer.encode(docs[i].text);
    if (document_done && !document_done()) stopped.store(true);
  }
  if (stopped.load()) return false;
  std::vector<uint16_t> streams[2];  // train, valid
  std::string index;
  for (size_t i = 0; i < docs.size(); ++i) {
    auto& s = streams[docs[i].split == "valid" ? 1 : 0];
    const int64_t begin = static_cast<int64_t>(s.size());
    for (int32_t id : encoded[i]) {
      if (id < 0 || id >= vocab)
        throw Error("tokenizer: id " + std::to_string(id) + " outside its vocabulary");
      s.push_back(static_cast<uint16_t>(id));
    }
    s.push_back(static_cast<uint16_t>(tokenizer.eos_id()));
    std::vector<int32_t>().swap(encoded[i]);  // freed as it is copied
    index += nlohmann::json{{"split", docs[i].split},
                            {"domain", docs[i].domain},
                            {"source", docs[i].source},
                            {"begin", begin},
                            {"end", static_cast<int64_t>(s.size())}}
                 .dump() +
             "\n";
  }
  write_packed_token_file(dir + "/train.tokens", streams[0], vocab);
  write_packed_token_file(dir + "/valid.tokens", streams[1], vocab);
  write_file_atomic(dir + "/documents.jsonl", index);
  return true;
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

void eval_batch(const TokenStream& stream, int64_t first_window, int64_t batch, int64_t used,
                int64_t seq, std::span<int32_t> tokens, std::span<int32_t> targets) {
  const int64_t available = eval_windows(stream, seq);
  require(used >= 1 && used <= available && first_window + batch <= used,
          "eval_batch: windows [" + std::to_string(first_window) + ", " +
              std::to_string(first_window + batch) + ") of " + std::to_string(used) + " used, " +
              std::to_string(available) + " available");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t o = eval_window_start(first_window + b, used, available, seq);
    for (int64_t s = 0; s < seq; ++s) {
      tokens[b * seq + s] = stream[o + s];
      targets[b * seq + s] = stream[o + s + 1];
    }
  }
}

}  // namespace moe
