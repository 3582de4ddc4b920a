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

}  // namespace moe
