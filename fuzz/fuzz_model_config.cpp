// libFuzzer: the model and MoE config parsers on arbitrary JSON must either return a config
// that validates or throw moe::Error naming the problem; never crash or throw anything else.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "moe/config.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const moe::ModelConfig c = moe::model_config_from_json(j);
    c.validate();
    // What was accepted must survive a round trip.
    if (moe::model_config_to_json(moe::model_config_from_json(moe::model_config_to_json(c))) !=
        moe::model_config_to_json(c))
      __builtin_trap();
  } catch (const moe::Error&) {
  }
  try {
    moe::moe_config_from_json(j).validate();
  } catch (const moe::Error&) {
  }
  return 0;
}
