// libFuzzer: a Hugging Face checkpoint's config.json (hf_checkpoint_config) on arbitrary
// bytes must either give a model config that validates or throw moe::Error; never crash.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "model/hf_checkpoint.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: read_json_file's error, not this parser's
  }
  try {
    const moe::HfCheckpointConfig c = moe::hf_checkpoint_config(j, "fuzz");
    c.config.validate();  // what it returns is valid: this must not throw
  } catch (const moe::Error&) {
  }
  return 0;
}
