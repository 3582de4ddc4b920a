#pragma once
// Tokens prepared once per corpus. The tokenizer a corpus trains and the token files it makes
// are kept in a cache folder ($XDG_CACHE_HOME/moe, or `moe train --cache-dir`) under the
// digests of their inputs, so that a second run on the same corpus starts at once:
//
//   <cache>/tokenizers/<key>/        tokenizer.model, entry.json
//       key: SHA-256 of the corpus digest, the vocabulary size and the trainer's options
//   <cache>/tokens/<corpus>-<tokenizer>/   train.tokens, valid.tokens, documents.jsonl, entry.json
//       the first 16 hex digits of the corpus's and of tokenizer.model's SHA-256
//
// An entry is written in a temporary folder beside it and renamed into place whole, and its
// entry.json lists the full digests it was made from and each file's size and SHA-256, all
// checked on every use: a half-written, truncated or altered entry is rebuilt, never used.
//
// A run folder keeps its own tokenizer.model and refers to its tokens in data/source.json
// (the corpus, both digests, the entry's folder); with --copy-data, or without a cache, its
// data/ holds the token files themselves. The corpus digest hashes the corpus's bytes (every
// file of a folder, with its relative path), plus the path as given for plain-text corpora,
// whose document sources name it.
#include <cstdint>
#include <string>

namespace moe {

// Bump when tokenising, the token files or the tokenizer's training change: older entries
// are then never matched again.
inline constexpr int kTokenCacheVersion = 1;

// The default cache folder: $XDG_CACHE_HOME/moe, else $HOME/.cache/moe, else "" (none).
std::string default_token_cache_dir();

// SHA-256 (hex) identifying the corpus at `path` (a file or a folder) as read_corpus reads it.
std::string corpus_digest(const std::string& path, bool quiet = false);

struct RunDataRequest {
  std::string corpus;
  int64_t vocab_size = 0;
  std::string cache_dir;   // "" = no cache: everything is built in the run folder
  bool copy_data = false;  // with a cache: also copy the token files into the run folder
  bool quiet = false;      // no progress lines
};

struct RunDataResult {
  bool tokenizer_cached = false;  // the tokenizer came from the cache
  bool tokens_cached = false;     // the token files came from the cache (nothing tokenised)
  std::string tokens_dir;         // where the run's token files are
};

// Gives the fresh run in `dir` its tokenizer.model and its tokens (data/source.json and, when
// copied or built there, data/*.tokens and data/documents.jsonl), from the cache or built now
// (and then cached). Ctrl-C (tensor/progress.h) stops it with Interrupted. Throws Error, and
// VocabularyTooLarge's message as an Error naming --vocab-size, on a corpus too small.
RunDataResult prepare_run_data(const RunDataRequest& request, const std::string& dir);

// The folder that holds run `dir`'s train.tokens, valid.tokens and documents.jsonl: <dir>/data
// when it holds them, else the cache entry data/source.json names, checked against its
// digests. A missing or broken entry is rebuilt from the recorded corpus when `rebuild` (a
// resumed run), after checking that the corpus and tokenizer still match the digests; else,
// or when they do not, an Error names the missing file and what to do.
std::string run_tokens_dir(const std::string& dir, bool rebuild = false, bool quiet = false);

}  // namespace moe
