#include "model/checkpoint.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "model/hf_checkpoint.h"
#include "model/hf_layout.h"
#include "model/param_count.h"
#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {

std::map<std::string, Tensor> model_tensors(Transformer& model, ParamStore& store) {
  std::map<std::string, Tensor> out;
  for (const HfTensorView& v : hf_tensor_views(model, store, HfWhich::Values)) {
    Tensor t(v.shape, v.name);
    std::copy(v.data.begin(), v.data.end(), t.data());
    out.emplace(v.name, std::move(t));
  }
  return out;
}

int64_t load_model_tensors(Transformer& model, ParamStore& store, const SafetensorsFile& file,
                           const std::string& source, bool allow_missing_thresholds) {
  const auto views = hf_tensor_views(model, store, HfWhich::Values);
  std::set<std::string> expected, skipped;
  for (const HfTensorView& v : views) {
    expected.insert(v.name);
    auto it = file.tensors.find(v.name);
    if (it == file.tensors.end() && v.name.ends_with(".gate.expert_threshold")) {
      if (!allow_missing_thresholds)
        throw Error(source + ": missing tensor '" + v.name +
                    "': an expert-choice run written before evaluation routed by learned "
                    "thresholds; resume it (moe train --resume) to estimate them");
      skipped.insert(v.name);
      continue;
    }
    if (it == file.tensors.end())
      throw Error(source + ": missing tensor '" + v.name + "' (shape " + shape_str(v.shape) + ")");
    if (it->second.shape() != v.shape)
      throw Error(source + ": tensor '" + v.name + "' has shape " + shape_str(it->second.shape()) +
                  ", the config needs " + shape_str(v.shape));
    if (!all_finite(it->second.span()))
      throw Error(source + ": tensor '" + v.name + "' holds NaN or inf");
  }
  for (const auto& [name, t] : file.tensors)
    if (!expected.count(name))
      throw Error(source + ": unexpected tensor '" + name + "' (not in this config's model)");
  // Everything checked: now copy.
  for (const HfTensorView& v : views) {
    if (skipped.count(v.name)) continue;
    const Tensor& t = file.tensors.at(v.name);
    std::copy(t.data(), t.data() + t.numel(), v.data.data());
  }
  return static_cast<int64_t>(skipped.size());
}

void save_model_config(const std::string& dir, const ModelConfig& config) {
  write_file_atomic(dir + "/config.json", model_config_to_json(config).dump(2) + "\n");
}

LoadedModel load_model(const std::string& dir, const std::string& weights, uint64_t seed) {
  if (weights.empty() && is_hf_checkpoint(dir)) return load_hf_checkpoint(dir, seed);
  LoadedModel m;
  m.config = load_model_config(dir + "/config.json");
  const std::string path = weights.empty() ? dir + "/model.safetensors" : weights;
  // The config is as untrusted as the weights: one that asks for more parameters than the
  // file can hold (2 bytes each at the least, F16/BF16) is refused before the model, its
  // parameters or anything sized by the config is allocated.
  std::error_code ec;
  const uintmax_t file_bytes = std::filesystem::file_size(path, ec);
  if (ec) throw Error("cannot read model weights '" + path + "': " + ec.message());
  const int64_t params = count_params(arch_from_model_config(m.config, dir)).total;
  if (static_cast<uintmax_t>(params) > file_bytes / 2)
    throw Error(path + ": " + std::to_string(file_bytes) + " bytes cannot hold the " +
                std::to_string(params) + " parameters that " + dir + "/config.json describes");
  m.store = std::make_unique<ParamStore>();
  m.model = std::make_unique<Transformer>(m.config, *m.store, seed);
  m.store->allocate();
  load_model_tensors(*m.model, *m.store, read_safetensors(path), path);
  return m;
}

}  // namespace moe
