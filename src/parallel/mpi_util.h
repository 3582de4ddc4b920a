#pragma once
// Small helpers shared by parallel/'s MPI code (included by .cpp files only).
#include <chrono>
#include <climits>
#include <cstddef>
#include <string>

#include "tensor/error.h"

namespace moe {

// MPI counts are ints: a larger message is refused with its size rather than truncated.
inline int mpi_count(size_t n, const char* what) {
  if (n > static_cast<size_t>(INT_MAX))
    throw Error(std::string(what) + ": " + std::to_string(n) +
                " values exceed MPI's per-message count (2^31 - 1)");
  return static_cast<int>(n);
}

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace moe
