// libFuzzer: the MoE config parser (moe/config) on arbitrary JSON must either return a
// config that validates, survives a round trip and computes its capacities, or throw moe::Error
// naming the problem; never crash or throw anything else.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/config.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  moe::MoeConfig c;
  try {
    c = moe::moe_config_from_json(j);
  } catch (const moe::Error&) {
    return 0;
  }
  c.validate();  // what was accepted is valid: a throw here is a finding
  if (moe::moe_config_to_json(moe::moe_config_from_json(moe::moe_config_to_json(c))) !=
      moe::moe_config_to_json(c))
    __builtin_trap();
  // Capacity of an accepted config is -1 (dropless) or a real slot count at any batch size.
  for (int64_t tokens : {int64_t{1}, int64_t{4096}, int64_t{1} << 20})
    for (bool training : {true, false}) {
      const int64_t cap = c.capacity(tokens, training);
      if (cap < -1) __builtin_trap();
    }
  return 0;
}
