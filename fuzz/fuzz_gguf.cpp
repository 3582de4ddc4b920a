// libFuzzer: parse_gguf on arbitrary bytes must either return a header whose every tensor lies
// inside the file, or throw moe::Error; never crash, hang, over-read or over-allocate.
#include <cstddef>
#include <cstdint>
#include <span>

#include "tensor/error.h"
#include "tensor/gguf.h"

// Where the tensors' bytes are read to: a volatile store the compiler cannot drop.
volatile std::byte last_byte_read;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const moe::GgufHeader h = moe::parse_gguf(file, "fuzz");
    for (const moe::GgufTensorInfo& t : h.tensors()) {
      if (h.data_start() + t.offset + t.bytes > size) __builtin_trap();
      if (t.bytes == 0) continue;
      // The first and last bytes, read as a consumer would: AddressSanitizer checks the bounds.
      const std::span<const std::byte> bytes = file.subspan(h.data_start() + t.offset, t.bytes);
      last_byte_read = bytes.front();
      last_byte_read = bytes.back();
    }
    for (const auto& [key, value] : h.metadata())
      if (value.type_name().empty()) __builtin_trap();
  } catch (const moe::Error&) {
  }
  return 0;
}
