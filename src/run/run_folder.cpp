#include "run/run_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr const char* kReplacingSuffix = ".replacing";

// "runs/x/" and "runs/./x" are "runs/x": the staging folder must be a sibling, not a child.
std::string folder_path(const std::string& given) {
  fs::path p = fs::path(given).lexically_normal();
  if (!p.has_filename() && p.has_parent_path()) p = p.parent_path();
  return p.string();
}

std::string read_holder_pid(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid;
}

// The lock file's fd, locked, or -1 when another process holds it (its pid in `holder`).
// Throws Error when the lock file cannot be opened.
int lock_run_file(const std::string& dir, std::string& holder) {
  const std::string path = dir + "/" + kRunLockFile;
  // A holder may remove the folder (a failed start) while we wait on its lock file's inode:
  // the lock counts only if the path still names the file we locked.
  for (int attempt = 0; attempt < 8; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0)
      note_file_operation();
    else if (errno == EEXIST)
      fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // removed between the two opens
      throw Error(path + ": cannot open the run's lock file: " + std::strerror(errno));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      holder = read_holder_pid(fd);
      ::close(fd);
      if (err == EWOULDBLOCK) return -1;
      throw Error(path + ": cannot lock: " + std::strerror(err));
    }
    struct stat locked {
    }, named{};
    if (::fstat(fd, &locked) == 0 && ::stat(path.c_str(), &named) == 0 &&
        locked.st_ino == named.st_ino && locked.st_dev == named.st_dev) {
      const std::string pid = std::to_string(::getpid()) + "\n";
      if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0)
        throw Error(path + ": cannot write the lock file: " + std::strerror(errno));
      return fd;
    }
    ::close(fd);
  }
  throw Error(path + ": the lock file keeps being replaced; is another moe train starting?");
}

void remove_path(const fs::path& p) {
  if (fs::remove_all(p) > 0) note_file_operation();
}

// "<name>", "<name>.next", "<name>.tmp", "<name>.next.tmp": the files a run writes.
bool is_run_file(std::string name) {
  static const std::set<std::string> kRunFiles = {"config.json",
                                                  "model.safetensors",
                                                  "optimizer.safetensors",
                                                  "trainer_state.json",
                                                  "tokenizer.model",
                                                  "metrics.jsonl",
                                                  "data",
                                                  "checkpoints",
                                                  kRunLockFile};
  for (const char* suffix : {".tmp", ".next"})
    if (name.ends_with(suffix)) name.resize(name.size() - std::strlen(suffix));
  // report.html: the page `moe report` writes into a run; it goes with the run.
  return kRunFiles.contains(name) || name == "report.html";
}

// A folder with anything but run files in it is not ours to write (or empty).
void refuse_foreign_folder(const std::string& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!is_run_file(name))
      throw Error("'" + dir + "' is not empty and holds no run (it has '" + name +
                  "'); choose another --out or empty it");
  }
}

// Removes the run files of a folder that holds no checkpoint, keeping the lock file.
void clear_unfinished_start(const std::string& dir) {
  refuse_foreign_folder(dir);
  std::vector<fs::path> run_files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename() != kRunLockFile) run_files.push_back(entry.path());
  if (run_files.empty()) return;
  std::fprintf(stderr, "clearing '%s': a run started there stopped before its first checkpoint\n",
               dir.c_str());
  for (const fs::path& p : run_files) remove_path(p);
}

int64_t checkpoint_step(const std::string& dir) {
  std::ifstream in(dir + "/trainer_state.json");
  const auto state = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return state.is_object() && state.contains("step") && state["step"].is_number_integer()
             ? state["step"].get<int64_t>()
             : -1;
}

// A "<dir>.replacing" left by a --force run that was killed: nobody holds its lock.
void remove_stale_replacement(const std::string& dir) {
  const std::string staging = dir + kReplacingSuffix;
  if (!fs::is_directory(staging)) return;
  if (auto lock = RunLock::try_acquire(staging)) remove_path(staging);
}

}  // namespace

RunLock RunLock::acquire(const std::string& dir) {
  std::string holder;
  const int fd = lock_run_file(dir, holder);
  if (fd < 0)
    throw Error("run folder '" + dir + "' is in use by " +
                (holder.empty() ? std::string("another process") : "process " + holder) +
                " (it holds " + kRunLockFile + "); wait for it to finish or stop it");
  return RunLock(fd);
}

std::optional<RunLock> RunLock::try_acquire(const std::string& dir) {
  try {
    std::string holder;
    const int fd = lock_run_file(dir, holder);
    if (fd >= 0) return RunLock(fd);
  } catch (const Error&) {  // a read-only folder: nobody can write it, nothing to lock
  }
  return std::nullopt;
}

RunLock::RunLock(RunLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
RunLock& RunLock::operator=(RunLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}
RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the flock
}

bool holds_checkpoint(const std::string& dir) {
  return fs::exists(dir + "/trainer_state.json");
}

void require_run_folder(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error("'" + dir + "' is not a folder");
  if (!fs::is_regular_file(dir + "/config.json"))
    throw Error("'" + dir +
                "' is not a run folder (no config.json): give a folder that moe train wrote");
}

RunFolder RunFolder::open_fresh(const std::string& given, bool force) {
  const std::string out = folder_path(given);
  if (fs::exists(out) && !fs::is_directory(out))
    throw Error("--out '" + out + "' exists and is not a folder");
  // Made one level at a time, so that a failed start can remove exactly what it made.
  std::vector<std::string> missing, created;
  for (fs::path p = out; !p.empty() && !fs::exists(p); p = p.parent_path())
    missing.push_back(p.string());
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (::mkdir(it->c_str(), 0755) == 0) {
      created.insert(created.begin(), *it);
      note_file_operation();
    } else if (errno != EEXIST) {
      throw Error("cannot create run folder '" + *it + "': " + std::strerror(errno));
    }
  }
  refuse_foreign_folder(out);  // before the lock file appears in it
  RunLock lock = RunLock::acquire(out);
  remove_stale_replacement(out);
  if (holds_checkpoint(out)) {
    if (!force)
      throw Error("'" + out + "' already holds a run (step " +
                  std::to_string(checkpoint_step(out)) + "): continue it with --resume " + out +
                  ", or pass --force to replace it");
    const std::string staging = out + kReplacingSuffix;
    if (::mkdir(staging.c_str(), 0755) != 0)
      throw Error("cannot create '" + staging + "': " + std::strerror(errno));
    note_file_operation();
    std::fprintf(stderr,
                 "--force: training in '%s'; it replaces the run in '%s' at its first "
                 "checkpoint\n",
                 staging.c_str(), out.c_str());
    RunFolder folder(out, staging, std::make_shared<RunLock>(RunLock::acquire(staging)));
    folder.replaced_ = std::move(lock);
    return folder;
  }
  clear_unfinished_start(out);
  RunFolder folder(out, out, std::make_shared<RunLock>(std::move(lock)));
  folder.created_ = std::move(created);
  return folder;
}

RunFolder RunFolder::open_existing(const std::string& given) {
  const std::string dir = folder_path(given);
  if (!holds_checkpoint(dir))  // before a lock file appears in it
    throw Error("'" + dir + "' holds no checkpoint (no trainer_state.json)");
  RunLock lock = RunLock::acquire(dir);
  remove_stale_replacement(dir);
  return RunFolder(dir, dir, std::make_shared<RunLock>(std::move(lock)));
}

void RunFolder::checkpoint_saved() {
  if (!replaced_) return;
  // One atomic step: `out_` names either the whole old run or the new one with its checkpoint.
  if (::renameat2(AT_FDCWD, dir_.c_str(), AT_FDCWD, out_.c_str(), RENAME_EXCHANGE) != 0)
    throw Error("cannot swap '" + dir_ + "' into '" + out_ + "': " + std::strerror(errno) +
                " (the new run stays in '" + dir_ + "', the old one in '" + out_ + "')");
  note_file_operation();
  remove_path(dir_);  // now the old run
  replaced_.reset();
  std::fprintf(stderr, "--force: the new run replaced the old one in '%s'\n", out_.c_str());
  dir_ = out_;
}

void RunFolder::discard() {
  if (replaced_) {
    remove_path(dir_);
  } else if (!created_.empty()) {
    remove_path(out_);
    std::error_code ignored;  // a parent another process has since used stays
    for (size_t i = 1; i < created_.size(); ++i) fs::remove(created_[i], ignored);
  } else {
    for (const auto& entry : fs::directory_iterator(out_))
      if (is_run_file(entry.path().filename().string())) remove_path(entry.path());
  }
}

}  // namespace moe
