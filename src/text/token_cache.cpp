#include "text/token_cache.h"

#include <fcntl.h>
#include <omp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "tensor/atomic_file.h"
#include "tensor/error.h"
#include "tensor/progress.h"
#include "tensor/sha256.h"
#include "text/data.h"
#include "text/tokenizer.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr const char* kEntryFile = "entry.json";
constexpr const char* kSourceFile = "source.json";  // in a run's data/
constexpr const char* kTokenFiles[] = {"train.tokens", "valid.tokens", "documents.jsonl"};

bool is_hidden(const fs::path& p) {
  return p.filename().string().starts_with('.');
}

// The files read_corpus reads from a folder: every regular file not hidden, in no hidden
// folder, by path relative to `folder`, sorted.
std::vector<fs::path> corpus_files(const fs::path& folder) {
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(folder); it != fs::recursive_directory_iterator();
       ++it) {
    if (it->is_directory() && is_hidden(it->path()))
      it.disable_recursion_pending();
    else if (it->is_regular_file() && !is_hidden(it->path()))
      files.push_back(it->path().lexically_relative(folder));
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Hashes a file's bytes, one progress count per MiB, stopping on Ctrl-C.
void hash_file(Sha256& hash, const std::string& path, PhaseProgress& progress) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw Error("cannot read '" + path + "': " + std::strerror(errno));
  std::vector<unsigned char> buffer(1 << 20);
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0) {
    hash.update({buffer.data(), n});
    progress.advance(1);
    throw_if_stopped();
  }
  if (std::ferror(file.get())) throw Error("cannot read '" + path + "': read error");
}

int64_t mebibytes(uintmax_t bytes) {
  return static_cast<int64_t>((bytes + (1 << 20) - 1) >> 20);
}

// ---- cache entries: a folder of files and entry.json, renamed into place whole ----------

// What is wrong with the entry at `dir` for `expected` (its fields must match entry.json's),
// or "" when it is intact: every file listed, of its size and SHA-256.
std::string entry_problem(const std::string& dir, const nlohmann::json& expected) {
  const std::string manifest_path = dir + "/" + kEntryFile;
  if (!fs::is_directory(dir)) return "'" + dir + "' is missing";
  std::ifstream in(manifest_path);
  if (!in) return "'" + manifest_path + "' is missing (a half-written entry)";
  const auto manifest = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object())
    return "'" + manifest_path + "' is not an entry's manifest";
  for (const auto& [key, value] : expected.items())
    if (!manifest.contains(key) || manifest[key] != value)
      return "'" + manifest_path + "' was made from other inputs ('" + key + "' differs)";
  for (const auto& [name, want] : manifest["files"].items()) {
    const std::string path = dir + "/" + name;
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    if (ec) return "'" + path + "' is missing";
    if (!want.is_object() || !want.contains("bytes") || !want.contains("sha256") ||
        want["bytes"] != size)
      return "'" + path + "' has " + std::to_string(size) + " bytes, not the size its entry lists";
    if (sha256_file(path) != want["sha256"]) return "'" + path + "' does not match its digest";
  }
  return "";
}

// Removes temporary entry folders ".tmp-<pid>-..." whose writer no longer runs (killed).
void remove_abandoned_temporaries(const fs::path& parent) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with(".tmp-") && !name.starts_with(".old-")) continue;
    const long pid = std::strtol(name.c_str() + 5, nullptr, 10);
    if (pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH)) continue;
    fs::remove_all(e.path(), ec);
  }
}

// A fresh temporary folder beside the entry `final_dir` will become.
std::string make_temporary_entry(const fs::path& parent) {
  fs::create_directories(parent);
  remove_abandoned_temporaries(parent);
  std::string pattern = (parent / (".tmp-" + std::to_string(::getpid()) + "-XXXXXX")).string();
  if (!::mkdtemp(pattern.data()))
    throw Error("cannot create a folder in the token cache '" + parent.string() +
                "': " + std::strerror(errno) + " (pass --cache-dir elsewhere)");
  return pattern;
}

void fsync_folder(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Lists the files of temporary entry `tmp` with their sizes and digests in its entry.json
// (written last), then renames it to `final_dir`, replacing a broken entry there. When another
// process put an intact entry there first, that one stays and `tmp` goes.
void commit_entry(const std::string& tmp, const std::string& final_dir, nlohmann::json manifest,
                  const std::vector<std::string>& files) {
  manifest["files"] = nlohmann::json::object();
  for (const std::string& name : files) {
    const std::string path = tmp + "/" + name;
    manifest["files"][name] = {{"bytes", fs::file_size(path)}, {"sha256", sha256_file(path)}};
  }
  write_file_atomic(tmp + "/" + kEntryFile, manifest.dump(2) + "\n");
  if (fs::exists(final_dir)) {  // broken (callers checked): moved aside, then removed
    const fs::path final_path(final_dir);
    const std::string old = (final_path.parent_path() / (".old-" + std::to_string(::getpid()) +
                                                         "-" + final_path.filename().string()))
                                .string();
    std::error_code ec;
    fs::rename(final_dir, old, ec);
    fs::remove_all(old, ec);
  }
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    const int err = errno;
    std::error_code ec;
    fs::remove_all(tmp, ec);
    if (err != ENOTEMPTY && err != EEXIST)
      throw Error("cannot rename '" + tmp + "' to '" + final_dir + "': " + std::strerror(err));
  }
  fsync_folder(fs::path(final_dir).parent_path().string());
}

// A temporary entry folder that removes itself unless committed.
class TemporaryEntry {
 public:
  explicit TemporaryEntry(const fs::path& parent) : dir_(make_temporary_entry(parent)) {}
  ~TemporaryEntry() {
    std::error_code ec;
    if (!committed_) fs::remove_all(dir_, ec);
  }
  const std::string& dir() const { return dir_; }
  void commit(const std::string& final_dir, const nlohmann::json& manifest,
              const std::vector<std::string>& files) {
    committed_ = true;
    commit_entry(dir_, final_dir, manifest, files);
  }

 private:
  std::string dir_;
  bool committed_ = false;
};

void copy_file_atomic(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw Error("cannot read '" + from + "'");
  AtomicFile out(to);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (in.gcount() > 0) out.write(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw Error("cannot read '" + from + "'");
  out.commit();
}

void make_folder(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw Error("cannot create '" + dir + "': " + std::strerror(errno));
  note_file_operation();
}

// ---- the tokenizer and the tokens of one corpus -----------------------------------------

TokenizerTrainOptions tokenizer_options(int64_t vocab_size) {
  TokenizerTrainOptions o;
  o.vocab_size = static_cast<int>(vocab_size);
  o.threads = omp_get_max_threads();
  return o;
}

// What names a tokenizer: the corpus and every training option that changes the model file.
std::string tokenizer_key(const std::string& corpus_sha, const TokenizerTrainOptions& o) {
  return sha256_hex("moe tokenizer v" + std::to_string(kTokenCacheVersion) + "\ncorpus " +
                    corpus_sha + "\nvocab " + std::to_string(o.vocab_size) + "\nchunk " +
                    std::to_string(o.max_chunk_bytes) + "\nmax_text " +
                    std::to_string(o.max_text_bytes) + "\n");
}

// The corpus's documents, read once, when first needed.
class LazyCorpus {
 public:
  LazyCorpus(std::string path, bool quiet) : path_(std::move(path)), quiet_(quiet) {}
  const std::vector<Document>& documents() {
    if (!docs_) {
      std::fprintf(stderr, "reading corpus %s\n", path_.c_str());
      PhaseProgress progress("reading corpus", 0, "", quiet_);
      docs_ = read_corpus(path_);
      throw_if_stopped();
    }
    return *docs_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool quiet_;
  std::optional<std::vector<Document>> docs_;
};

// Trains the corpus's tokenizer into `model_path`.
void train_tokenizer(LazyCorpus& corpus, const TokenizerTrainOptions& o,
                     const std::string& model_path, bool quiet) {
  std::vector<std::string> texts;
  for (const Document& d : corpus.documents())
    if (d.split == "train") texts.push_back(d.text);
  std::fprintf(
      stderr, "training a %d-piece BPE tokenizer on %zu documents (every n-th beyond %.0f MB)...\n",
      o.vocab_size, texts.size(), static_cast<double>(o.max_text_bytes) / 1e6);
  PhaseProgress progress("training the tokenizer", 0, "", quiet);
  try {
    Tokenizer::train(texts, o, model_path);
  } catch (const VocabularyTooLarge& e) {
    throw Error("corpus '" + corpus.path() + "' is too small for a " + std::to_string(e.requested) +
                "-piece vocabulary: its training documents make " + "at most " +
                std::to_string(e.max_pieces) + " pieces; pass --vocab-size " +
                std::to_string(e.max_pieces) + " (or less) or a larger --corpus");
  }
}

// Tokenises the corpus into `dir` (train.tokens, valid.tokens, documents.jsonl).
void tokenize_corpus(LazyCorpus& corpus, const std::string& tokenizer_path, const std::string& dir,
                     bool quiet) {
  const std::vector<Document>& docs = corpus.documents();
  const Tokenizer tokenizer(tokenizer_path);
  PhaseProgress progress("tokenizing the corpus", static_cast<int64_t>(docs.size()), "documents",
                         quiet);
  const bool done = build_token_files(docs, tokenizer, dir, [&] {
    progress.advance();
    return stop_signal() == 0;
  });
  if (!done) throw_if_stopped();
}

nlohmann::json tokens_manifest(const std::string& corpus_sha, const std::string& tokenizer_sha) {
  return {{"version", kTokenCacheVersion},
          {"corpus_sha256", corpus_sha},
          {"tokenizer_sha256", tokenizer_sha}};
}

std::string tokens_entry_dir(const std::string& cache, const std::string& corpus_sha,
                             const std::string& tokenizer_sha) {
  return cache + "/tokens/" + corpus_sha.substr(0, 16) + "-" + tokenizer_sha.substr(0, 16);
}

// Tokenises the corpus into the cache entry `entry` (replacing a broken one there).
void build_tokens_entry(LazyCorpus& corpus, const std::string& entry,
                        const nlohmann::json& manifest, const std::string& tokenizer_path,
                        bool quiet) {
  TemporaryEntry tmp(fs::path(entry).parent_path());
  tokenize_corpus(corpus, tokenizer_path, tmp.dir(), quiet);
  tmp.commit(entry, manifest, {std::begin(kTokenFiles), std::end(kTokenFiles)});
}

// What is wrong with the tokens entry `entry` ("" when intact), its check shown as a phase.
std::string checked_tokens_entry(const std::string& entry, const nlohmann::json& manifest,
                                 bool quiet) {
  PhaseProgress progress("checking the cached tokens", 0, "", quiet);
  return entry_problem(entry, manifest);
}

// The tokens entry of (corpus, tokenizer), built when missing or broken. Returns whether it
// was found intact.
bool find_or_build_tokens(LazyCorpus& corpus, const std::string& entry,
                          const nlohmann::json& manifest, const std::string& tokenizer_path,
                          bool quiet) {
  const std::string problem = checked_tokens_entry(entry, manifest, quiet);
  if (problem.empty()) return true;
  if (fs::exists(entry))
    std::fprintf(stderr, "token cache: %s; building the entry again\n", problem.c_str());
  build_tokens_entry(corpus, entry, manifest, tokenizer_path, quiet);
  return false;
}

}  // namespace

std::string default_token_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg == '/')
    return std::string(xdg) + "/moe";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.cache/moe";
  return "";
}

std::string corpus_digest(const std::string& path, bool quiet) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Error("corpus '" + path + "' does not exist");
  Sha256 hash;
  hash.update("moe corpus v" + std::to_string(kTokenCacheVersion) + "\n");
  // Plain-text documents are named after their files as given ("notes.txt:12"); the shipped
  // JSONL format names its own sources.
  const bool jsonl_by_name = path.ends_with(".jsonl") || path.ends_with(".jsonl.gz");
  if (!jsonl_by_name) hash.update("path " + path + "\n");
  if (!fs::is_directory(status)) {
    PhaseProgress progress("hashing corpus " + path, mebibytes(fs::file_size(path)), "MiB", quiet);
    hash.update("file\n");
    hash_file(hash, path, progress);
    return hash.hex_digest();
  }
  std::vector<fs::path> files;
  uintmax_t bytes = 0;
  try {
    files = corpus_files(path);
    for (const fs::path& f : files) bytes += fs::file_size(fs::path(path) / f);
  } catch (const fs::filesystem_error& e) {
    throw Error("corpus '" + path + "': " + e.what());
  }
  PhaseProgress progress("hashing corpus " + path, mebibytes(bytes) + int64_t(files.size()), "MiB",
                         quiet);
  for (const fs::path& f : files) {
    const std::string full = (fs::path(path) / f).string();
    hash.update("file " + f.generic_string() + " " + std::to_string(fs::file_size(full)) + "\n");
    hash_file(hash, full, progress);
  }
  return hash.hex_digest();
}

RunDataResult prepare_run_data(const RunDataRequest& r, const std::string& dir) {
  RunDataResult result;
  LazyCorpus corpus(r.corpus, r.quiet);
  const TokenizerTrainOptions topt = tokenizer_options(r.vocab_size);
  const std::string run_tokenizer = dir + "/tokenizer.model", data_dir = dir + "/data";
  const std::string corpus_sha = corpus_digest(r.corpus, r.quiet);
  nlohmann::json source = {{"version", kTokenCacheVersion},
                           {"corpus", fs::absolute(r.corpus).lexically_normal().string()},
                           {"corpus_sha256", corpus_sha},
                           {"vocab_size", r.vocab_size}};
  if (r.cache_dir.empty()) {  // no cache: everything in the run folder, as it is made
    train_tokenizer(corpus, topt, run_tokenizer, r.quiet);
    throw_if_stopped();
    make_folder(data_dir);
    tokenize_corpus(corpus, run_tokenizer, data_dir, r.quiet);
    source["tokenizer_sha256"] = sha256_file(run_tokenizer);
    write_file_atomic(data_dir + "/" + kSourceFile, source.dump(2) + "\n");
    result.tokens_dir = data_dir;
    return result;
  }
  const std::string cache = fs::absolute(r.cache_dir).lexically_normal().string();
  // The tokenizer: cached under its inputs' key.
  const std::string key = tokenizer_key(corpus_sha, topt);
  const std::string tokenizer_entry = cache + "/tokenizers/" + key.substr(0, 32);
  const nlohmann::json tokenizer_manifest = {{"version", kTokenCacheVersion}, {"key", key}};
  const std::string problem = entry_problem(tokenizer_entry, tokenizer_manifest);
  result.tokenizer_cached = problem.empty();
  if (!result.tokenizer_cached) {
    if (fs::exists(tokenizer_entry))
      std::fprintf(stderr, "token cache: %s; building the entry again\n", problem.c_str());
    TemporaryEntry tmp(fs::path(tokenizer_entry).parent_path());
    train_tokenizer(corpus, topt, tmp.dir() + "/tokenizer.model", r.quiet);
    tmp.commit(tokenizer_entry, tokenizer_manifest, {"tokenizer.model"});
    throw_if_stopped();  // after the commit: a stopped run still leaves the tokenizer cached
  }
  copy_file_atomic(tokenizer_entry + "/tokenizer.model", run_tokenizer);
  // The tokens: cached under the corpus's and the tokenizer's digests.
  const std::string tokenizer_sha = sha256_file(run_tokenizer);
  source["tokenizer_sha256"] = tokenizer_sha;
  const std::string entry = tokens_entry_dir(cache, corpus_sha, tokenizer_sha);
  source["cache_entry"] = entry;
  result.tokens_cached = find_or_build_tokens(
      corpus, entry, tokens_manifest(corpus_sha, tokenizer_sha), run_tokenizer, r.quiet);
  std::fprintf(stderr, "tokens: %s the cache, %s\n",
               result.tokens_cached ? "reused from" : "tokenized into", entry.c_str());
  make_folder(data_dir);
  result.tokens_dir = entry;
  if (r.copy_data) {
    for (const char* name : kTokenFiles)
      copy_file_atomic(entry + "/" + name, data_dir + "/" + name);
    result.tokens_dir = data_dir;
  }
  write_file_atomic(data_dir + "/" + kSourceFile, source.dump(2) + "\n");
  throw_if_stopped();
  return result;
}

std::string run_tokens_dir(const std::string& dir, bool rebuild, bool quiet) {
  const std::string data_dir = dir + "/data";
  if (fs::exists(data_dir + "/train.tokens")) {  // copied, built in place, or an older run
    for (const char* name : kTokenFiles)
      if (!fs::exists(data_dir + "/" + name))
        throw Error("run '" + dir + "' lacks '" + data_dir + "/" + name + "'");
    return data_dir;
  }
  const std::string source_path = data_dir + "/" + kSourceFile;
  if (!fs::exists(source_path))
    throw Error("run '" + dir + "' lacks its token files: neither '" + data_dir +
                "/train.tokens' nor '" + source_path + "' (which names them in the cache) exists");
  std::ifstream in(source_path);
  const auto source = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (source.is_object() && !source.contains("cache_entry"))  // its tokens were in data/
    throw Error("run '" + dir + "' lacks '" + data_dir + "/train.tokens'");
  for (const char* key : {"corpus", "corpus_sha256", "tokenizer_sha256", "cache_entry"})
    if (!source.is_object() || !source.contains(key) || !source[key].is_string())
      throw Error(source_path + ": no string '" + key + "'");
  const std::string entry = source["cache_entry"], corpus_path = source["corpus"];
  const std::string corpus_sha = source["corpus_sha256"],
                    tokenizer_sha = source["tokenizer_sha256"];
  const nlohmann::json manifest = tokens_manifest(corpus_sha, tokenizer_sha);
  const std::string problem = checked_tokens_entry(entry, manifest, quiet);
  if (problem.empty()) return entry;
  const std::string cannot =
      "run '" + dir + "' uses the cached tokens in '" + entry + "', but " + problem;
  if (!rebuild)
    throw Error(cannot + "; `moe eval --model " + dir + "` rebuilds them from corpus '" +
                corpus_path + "'");
  if (!fs::exists(corpus_path))
    throw Error(cannot + ", and its corpus '" + corpus_path + "' is gone; restore either");
  if (corpus_digest(corpus_path, quiet) != corpus_sha)
    throw Error(cannot + ", and its corpus '" + corpus_path +
                "' has changed since the run started (another SHA-256 than " + source_path +
                " records); restore either");
  const std::string tokenizer_path = dir + "/tokenizer.model";
  if (!fs::exists(tokenizer_path) || sha256_file(tokenizer_path) != tokenizer_sha)
    throw Error(cannot + ", and '" + tokenizer_path + "' is " +
                (fs::exists(tokenizer_path) ? "not the tokenizer it was made with" : "missing"));
  std::fprintf(stderr, "token cache: %s; rebuilding it from corpus '%s'\n", problem.c_str(),
               corpus_path.c_str());
  LazyCorpus corpus(corpus_path, quiet);
  build_tokens_entry(corpus, entry, manifest, tokenizer_path, quiet);
  return entry;
}

}  // namespace moe
