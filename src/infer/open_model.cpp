#include "infer/open_model.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "model/hf_checkpoint.h"
#include "tensor/error.h"

namespace moe {

OpenedModel open_model(const std::string& dir, const InferenceOptions& options) {
  OpenedModel m;
  std::vector<std::string> files;
  MoeNaming naming = MoeNaming::Mixtral;
  if (is_hf_checkpoint(dir)) {
    m.kind = ModelKind::HuggingFace;
    const HfCheckpointConfig hf = hf_checkpoint_config(
        read_json_file(dir + "/config.json", "model config"), dir + "/config.json");
    m.config = hf.config;
    m.model_type = hf.model_type;
    if (hf.arch != HfArch::Mixtral) naming = MoeNaming::Qwen2;
    std::set<std::string> paths;
    for (const auto& [name, path] : open_hf_weights(dir).file_of) paths.insert(path);
    files.assign(paths.begin(), paths.end());
  } else {
    std::error_code ec;
    require(std::filesystem::is_regular_file(dir + "/config.json", ec),
            "'" + dir +
                "' is not a model folder (no config.json): give a folder that moe train wrote "
                "or a Hugging Face checkpoint folder");
    m.kind = ModelKind::Run;
    m.config = load_model_config(dir + "/config.json");
    files.push_back(dir + "/model.safetensors");
  }
  m.weights = std::make_unique<MappedCheckpoint>(dir, files);
  m.model = std::make_unique<InferenceModel>(m.config, naming, *m.weights, options);
  return m;
}

}  // namespace moe
