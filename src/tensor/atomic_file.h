#pragma once
// AtomicFile: a file that appears whole or not at all. Bytes go to "<path>.tmp"; commit()
// fsyncs it, renames it over <path> and fsyncs the folder, so a crash at any moment leaves
// either the old file or the new one. Destroyed uncommitted, it removes the temporary.
#include <cstddef>
#include <string>
#include <string_view>

namespace moe {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // throws Error when the temporary can't be created
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

void write_file_atomic(const std::string& path, std::string_view bytes);

// Crash-test hook. A file operation is any step that changes what a path in a run folder names:
// creating a temporary, renaming one into place, appending a line, making or removing a file or
// folder. Every writer calls note_file_operation() right after such a step. When the environment
// variable MOE_ABORT_AFTER_FILE_OPS is N > 0, the N-th call kills the process with SIGKILL (no
// destructors, no flushing: what a power cut or `kill -9` leaves). Unset, it is one compare.
inline constexpr const char* kAbortAfterFileOpsEnv = "MOE_ABORT_AFTER_FILE_OPS";
void note_file_operation();

}  // namespace moe
