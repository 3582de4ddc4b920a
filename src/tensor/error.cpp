#include "tensor/error.h"

#include <cstdio>

namespace moe {

OutOfMemory::OutOfMemory(const std::string& what, uint64_t bytes)
    : Error("out of memory: " + what + " needs " + format_bytes(bytes)), bytes_(bytes) {}

OutOfMemory::OutOfMemory(const std::string& what, uint64_t bytes, const std::string& detail)
    : Error("out of memory: " + what + " needs " + format_bytes(bytes) + ", " + detail),
      bytes_(bytes) {}

std::string format_bytes(uint64_t bytes) {
  constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " bytes";
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

void require(bool condition, const char* message) {
  if (!condition) throw Error(message);
}

void require(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}

}  // namespace moe
