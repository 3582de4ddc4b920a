#include "infer/weights.h"

#include "tensor/error.h"

namespace moe {

WeightView WeightSource::at(const std::string& name) const {
  const auto view = find(name);
  require(view.has_value(), describe() + ": missing tensor '" + name + "'");
  return *view;
}

MappedCheckpoint::MappedCheckpoint(std::string folder, const std::vector<std::string>& files)
    : folder_(std::move(folder)) {
  for (const std::string& file : files) {
    files_.emplace_back(file);
    for (const auto& [name, entry] : files_.back().header().tensors) {
      const auto [it, inserted] = file_of_.emplace(name, files_.size() - 1);
      require(inserted, folder_ + ": tensor '" + name + "' is in both " +
                            files_[it->second].path() + " and " + file);
    }
  }
}

std::optional<WeightView> MappedCheckpoint::find(const std::string& name) const {
  const auto it = file_of_.find(name);
  if (it == file_of_.end()) return std::nullopt;
  return files_[it->second].view(name);
}

std::optional<TensorLocation> MappedCheckpoint::locate(const std::string& name) const {
  const auto it = file_of_.find(name);
  if (it == file_of_.end()) return std::nullopt;
  const MappedSafetensors& file = files_[it->second];
  const SafetensorsEntry& e = file.header().tensors.at(name);
  return TensorLocation{file.path(), file.header().data_start + e.begin, e.end - e.begin, e.dtype,
                        e.shape};
}

std::vector<std::string> MappedCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : file_of_) out.push_back(name);
  return out;
}

void OwnedWeights::add_f32(const std::string& name, Tensor values) {
  f32_.insert_or_assign(name, std::move(values));
}

void OwnedWeights::add_bf16(const std::string& name, Shape shape, std::vector<uint16_t> bits) {
  require(static_cast<int64_t>(bits.size()) == shape_numel(shape),
          "bf16 tensor '" + name + "': data does not match its shape");
  bf16_.insert_or_assign(name, std::make_pair(std::move(shape), std::move(bits)));
}

std::optional<WeightView> OwnedWeights::find(const std::string& name) const {
  if (const auto it = f32_.find(name); it != f32_.end())
    return WeightView{TensorDtype::F32, it->second.shape(),
                      reinterpret_cast<const std::byte*>(it->second.data())};
  if (const auto it = bf16_.find(name); it != bf16_.end())
    return WeightView{TensorDtype::BF16, it->second.first,
                      reinterpret_cast<const std::byte*>(it->second.second.data())};
  return std::nullopt;
}

}  // namespace moe
