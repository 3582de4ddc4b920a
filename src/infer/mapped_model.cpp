#include "infer/mapped_model.h"

#include <nlohmann/json.hpp>
#include <set>

#include "model/config.h"
#include "tensor/error.h"

namespace moe {

MappedModel open_mapped_model(const std::string& dir, const DecoderOptions& options) {
  require(is_hf_checkpoint(dir), dir +
                                     ": not a Hugging Face checkpoint folder (config.json "
                                     "with a model_type); a run of moe train is read this "
                                     "way once exported: moe export --model RUN --out DIR");
  MappedModel m;
  m.checkpoint = hf_checkpoint_config(read_json_file(dir + "/config.json", "model config"),
                                      dir + "/config.json");
  const HfWeightFiles files = open_hf_weights(dir);
  const std::set<std::string> paths = [&] {
    std::set<std::string> p;
    for (const auto& [name, path] : files.file_of) p.insert(path);
    return p;
  }();
  m.weights =
      std::make_unique<MappedCheckpoint>(dir, std::vector<std::string>(paths.begin(), paths.end()));
  const MoeNaming naming =
      m.checkpoint.arch == HfArch::Mixtral ? MoeNaming::Mixtral : MoeNaming::Qwen2;
  m.decoder = std::make_unique<Decoder>(m.checkpoint.config, naming, *m.weights, options);
  return m;
}

}  // namespace moe
