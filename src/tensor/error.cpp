#include "tensor/error.h"

namespace moe {

void require(bool condition, const char* message) {
  if (!condition) throw Error(message);
}

void require(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}

}  // namespace moe
