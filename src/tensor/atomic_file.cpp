#include "tensor/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "tensor/error.h"

namespace moe {
namespace {

// 0 when the hook is off (unset, empty or not a positive number).
int64_t abort_after_file_ops() {
  const char* value = std::getenv(kAbortAfterFileOpsEnv);
  if (!value || !*value) return 0;
  char* end = nullptr;
  const long long n = std::strtoll(value, &end, 10);
  return *end == '\0' && n > 0 ? n : 0;
}

}  // namespace

void note_file_operation() {
  static const int64_t limit = abort_after_file_ops();
  static int64_t done = 0;
  if (limit == 0 || ++done < limit) return;
  std::fprintf(stderr, "%s: killing the process after file operation %lld\n", kAbortAfterFileOpsEnv,
               static_cast<long long>(done));
  std::raise(SIGKILL);
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(tmp_ + ": cannot create: " + std::strerror(errno));
  note_file_operation();
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  require(fd_ >= 0, tmp_ + ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(tmp_ + ": write failed: " + std::strerror(errno));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  require(fd_ >= 0, tmp_ + ": committed twice");
  if (::fsync(fd_) != 0) throw Error(tmp_ + ": fsync failed: " + std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    throw Error(path_ + ": rename from temporary failed: " + std::strerror(err));
  }
  note_file_operation();
  // The rename itself is durable only once the folder is synced.
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace moe
