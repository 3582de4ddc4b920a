// libFuzzer: parse_shard_index (model.safetensors.index.json of a Hugging Face checkpoint) on
// arbitrary bytes must either return a weight map of plain file names in the checkpoint's
// folder or throw moe::Error; never crash, hang or name a path elsewhere.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/hf_checkpoint.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto map =
        moe::parse_shard_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& [name, file] : map)
      if (name.empty() || file.empty() || file.front() == '.' ||
          file.find_first_of("/\\") != std::string::npos)
        __builtin_trap();
  } catch (const moe::Error&) {
  }
  return 0;
}
