#pragma once
// moe::Error: the one exception type for bad input and broken invariants. Its message names
// the file, tensor or field involved and what was expected, so the CLI can print it as is.
#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws Error(message) when `condition` is false. Keeps checks one line long at call sites.
// The std::string form builds its message before the check: per-call code whose message is
// assembled at run time writes `if (!ok) throw Error(...)` instead.
void require(bool condition, const char* message);
void require(bool condition, const std::string& message);

}  // namespace moe
