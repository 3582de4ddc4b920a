#pragma once
// moe::Error: the one exception type for bad input and broken invariants. Its message names
// the file, tensor or field involved and what was expected, so the CLI can print it as is.
#include <cstdint>
#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// An allocation that failed, or that could never succeed (more than the machine's memory, or
// a size that overflows): "out of memory: <what> needs 4.0 GiB". An Error, so the CLI reports
// it as bad input (exit 2): the usual cause is a size chosen by a user or read from a file.
class OutOfMemory : public Error {
 public:
  OutOfMemory(const std::string& what, uint64_t bytes);
  // With `detail` after the figure: "out of memory: <what> needs 4.0 GiB, <detail>".
  OutOfMemory(const std::string& what, uint64_t bytes, const std::string& detail);
  uint64_t bytes() const { return bytes_; }

 private:
  uint64_t bytes_;
};

// "4.0 GiB", "512.0 MiB", "12 bytes": a byte count for error messages.
std::string format_bytes(uint64_t bytes);

// Throws Error(message) when `condition` is false. Keeps checks one line long at call sites.
// The std::string form builds its message before the check: per-call code whose message is
// assembled at run time writes `if (!ok) throw Error(...)` instead.
void require(bool condition, const char* message);
void require(bool condition, const std::string& message);

}  // namespace moe
