// libFuzzer: the model config parser (model/config, which hands "moe" to the MoE parser) on
// arbitrary JSON must either return a config that validates, counts its parameters without
// overflow and survives a round trip, or throw moe::Error naming the problem; never crash
// or throw anything else.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "model/param_count.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  moe::ModelConfig c;
  try {
    c = moe::model_config_from_json(j);
  } catch (const moe::Error&) {
    return 0;
  }
  c.validate();  // what was accepted is valid: a throw here is a finding
  if (moe::model_config_to_json(moe::model_config_from_json(moe::model_config_to_json(c))) !=
      moe::model_config_to_json(c))
    __builtin_trap();
  try {
    const moe::ParamCount n = moe::count_params(moe::arch_from_model_config(c, "fuzz"));
    if (n.total < 0 || n.active < 0 || n.active > n.total) __builtin_trap();
  } catch (const moe::Error&) {  // an overflowing count is refused, not wrapped
  }
  return 0;
}
