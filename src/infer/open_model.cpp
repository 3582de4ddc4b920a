#include "infer/open_model.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "infer/gguf_weights.h"
#include "model/gguf_config.h"
#include "model/hf_checkpoint.h"
#include "tensor/error.h"

namespace moe {

bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string_view(magic, 4) == "GGUF";
}

namespace {

OpenedModel open_gguf(const std::string& path, const InferenceOptions& options) {
  OpenedModel m;
  m.kind = ModelKind::Gguf;
  auto file = std::make_unique<GgufFile>(path);
  const GgufModelConfig gguf = gguf_model_config(file->header());
  m.config = gguf.config;
  m.model_type = gguf.architecture;
  auto weights = std::make_unique<GgufWeights>(std::move(file), gguf);
  m.gguf = &weights->file();
  m.weights = std::move(weights);
  m.arch = gguf.arch;
  m.model = std::make_unique<InferenceModel>(m.config, m.arch, *m.weights, options);
  return m;
}

}  // namespace

OpenedModel open_model(const std::string& dir, const InferenceOptions& options) {
  if (is_gguf_file(dir)) return open_gguf(dir, options);
  OpenedModel m;
  std::vector<std::string> files;
  if (is_hf_checkpoint(dir)) {
    m.kind = ModelKind::HuggingFace;
    const HfCheckpointConfig hf = hf_checkpoint_config(
        read_json_file(dir + "/config.json", "model config"), dir + "/config.json");
    m.config = hf.config;
    m.model_type = hf.model_type;
    m.arch = hf.arch;
    std::set<std::string> paths;
    for (const auto& [name, path] : open_hf_weights(dir).file_of) paths.insert(path);
    files.assign(paths.begin(), paths.end());
  } else {
    std::error_code ec;
    require(std::filesystem::is_regular_file(dir + "/config.json", ec),
            "'" + dir +
                "' is not a model folder (no config.json): give a folder that moe train wrote, "
                "a Hugging Face checkpoint folder or a GGUF file");
    m.kind = ModelKind::Run;
    m.config = load_model_config(dir + "/config.json");
    files.push_back(dir + "/model.safetensors");
  }
  m.weights = std::make_unique<MappedCheckpoint>(dir, files);
  m.model = std::make_unique<InferenceModel>(m.config, m.arch, *m.weights, options);
  return m;
}

}  // namespace moe
