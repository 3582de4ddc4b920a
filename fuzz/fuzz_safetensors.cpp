// libFuzzer: parse_safetensors on arbitrary bytes must either return tensors whose sizes
// match their shapes or throw moe::Error; never crash, hang, over-read or over-allocate.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/error.h"
#include "tensor/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<char> bytes(data, data + size);
  try {
    const moe::SafetensorsFile f = moe::parse_safetensors(bytes, "fuzz");
    for (const auto& [name, t] : f.tensors)
      if (t.numel() != moe::shape_numel(t.shape())) __builtin_trap();
  } catch (const moe::Error&) {
  }
  return 0;
}
