#pragma once
// The corpus and its token streams.
//   corpus:  gzip JSONL, one {"domain", "source", "split", "text"} per line (data/README.md),
//            or plain UTF-8 text: a file, or a folder whose subfolders name the domains
//   tokens:  <dir>/<split>.tokens, a header then uint16 ids (memory-mapped), every document
//            followed by EOS; <dir>/documents.jsonl says which span is which document and domain
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tensor/rng.h"
#include "text/tokenizer.h"

namespace moe {

struct Document {
  std::string domain, source, split, text;
};

// Reads the whole corpus at `path`; errors name the file (and line or byte). `path` is
//  - a file named *.jsonl or *.jsonl.gz, or whose first line is a JSON object with a "text"
//    field: the shipped format (gzip-compressed or not), its split given per document;
//  - any other file: plain UTF-8 text (gzip-compressed or not), documents separated by blank
//    lines, the domain the file name without its extension (`books.txt` -> `books`);
//  - a folder: each subfolder a domain named after it, each file under it one document
//    (files directly in the folder form a domain named after the folder).
// Plain text is split by document: within each domain every 16th document is validation, and
// a domain of 2 to 15 documents gives its last one.
std::vector<Document> read_corpus(const std::string& path);

// Throws Error "<what> is not UTF-8 text (byte 3 is 0xff)" at the first byte that breaks UTF-8
// (an overlong form, a surrogate, past U+10FFFF, cut short) or is NUL.
void require_utf8(std::string_view text, const std::string& what);

// Tokenises every document of `docs` into <dir>/train.tokens and <dir>/valid.tokens (atomic
// writes) and <dir>/documents.jsonl. `document_done`, when set, is called after each document
// (from any thread); once it returns false the rest are skipped, nothing is written and the
// result is false (Ctrl-C).
bool build_token_files(const std::vector<Document>& docs, const Tokenizer& tokenizer,
                       const std::string& dir,
                       const std::function<bool()>& document_done = nullptr);

// A read-only, memory-mapped token file. Its header is checked against the file's size.
class TokenStream {
 public:
  explicit TokenStream(const std::string& path);
  ~TokenStream();
  TokenStream(const TokenStream&) = delete;
  TokenStream& operator=(const TokenStream&) = delete;

  int64_t size() const { return count_; }
  int32_t vocab_size() const { return vocab_; }
  int32_t operator[](int64_t i) const { return tokens_[i]; }

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  int64_t count_ = 0;
  int32_t vocab_ = 0;
};

// Writes a token file (used by build_token_files and tests).
void write_token_file(const std::string& path, std::span<const int32_t> tokens, int32_t vocab);

// Training batches: B windows of S+1 tokens at uniformly drawn offsets; tokens are the first
// S, targets the last S. tokens, targets: [B, S].
void sample_batch(const TokenStream& stream, Rng& rng, int64_t batch, int64_t seq,
                  std::span<int32_t> tokens, std::span<int32_t> targets);

// Evaluation windows: `used` non-overlapping windows of `seq` tokens spread evenly over the
// stream, window i starting at token (i * available / used) * seq with available =
// eval_windows(stream, seq), the windows `moe eval` takes: a validation then reads every part
// of a split that holds its domains one after another. Batch b holds windows b * batch + w.
int64_t eval_windows(const TokenStream& stream, int64_t seq);
// The first token of evaluation window i of `used` spread over `available` windows of `seq`.
inline int64_t eval_window_start(int64_t i, int64_t used, int64_t available, int64_t seq) {
  return i * available / used * seq;
}
void eval_batch(const TokenStream& stream, int64_t first_window, int64_t batch, int64_t used,
                int64_t seq, std::span<int32_t> tokens, std::span<int32_t> targets);

}  // namespace moe
