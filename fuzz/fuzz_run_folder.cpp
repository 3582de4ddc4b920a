// libFuzzer: a whole run folder from elsewhere. The input is split at "\n--moe-file--\n"
// into config.json, trainer_state.json, model.safetensors and optimizer.safetensors (missing
// parts are empty files), written into a scratch folder and loaded as `moe generate` loads a
// run (load_model) and as `moe train --resume` reads its checkpoint (recover_checkpoint,
// train_options_from_json, load_checkpoint). Each must load or throw moe::Error; never
// crash, over-read or allocate without bound.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "model/checkpoint.h"
#include "model/config.h"
#include "nn/optimizer.h"
#include "run/checkpoint.h"
#include "run/train_options.h"
#include "tensor/error.h"

namespace {

namespace fs = std::filesystem;
constexpr std::string_view kSeparator = "\n--moe-file--\n";
constexpr const char* kFiles[] = {"config.json", "trainer_state.json", "model.safetensors",
                                  "optimizer.safetensors"};

const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::string d = (fs::temp_directory_path() / "moe_fuzz_run_XXXXXX").string();
    if (!::mkdtemp(d.data())) __builtin_trap();
    return d;
  }();
  return dir;
}

void write_run(std::string_view input) {
  const std::string& dir = scratch_dir();
  for (const auto& entry : fs::directory_iterator(dir)) fs::remove_all(entry.path());
  for (const char* name : kFiles) {
    const size_t cut = input.find(kSeparator);
    std::ofstream(dir + "/" + name, std::ios::binary) << input.substr(0, cut);
    input =
        cut == std::string_view::npos ? std::string_view() : input.substr(cut + kSeparator.size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_run(std::string_view(reinterpret_cast<const char*>(data), size));
  const std::string& dir = scratch_dir();
  // The RoPE tables hold max_position_embeddings x head_dim floats whatever the weights: a
  // harness limit (not a product bug) keeps each run small enough to fuzz quickly.
  try {
    const moe::ModelConfig c = moe::load_model_config(dir + "/config.json");
    if (c.max_position_embeddings * c.resolved_head_dim() > (1 << 16)) return 0;
  } catch (const moe::Error&) {
  }
  std::optional<moe::LoadedModel> model;
  try {
    model = moe::load_model(dir);
  } catch (const moe::Error&) {
  }
  try {
    const nlohmann::json state = moe::recover_checkpoint(dir);
    if (state.contains("options")) moe::train_options_from_json(state["options"]);
    if (model) {
      moe::AdamW optimizer(*model->store, moe::AdamWOptions{});
      moe::load_checkpoint(dir, state.at("step").get<int64_t>(), *model->model, *model->store,
                           optimizer);
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
