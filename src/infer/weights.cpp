#include "infer/weights.h"

#include <algorithm>

#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/quant.h"

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
  return TensorLocation{file.path(),     file.header().data_start + e.begin,
                        e.end - e.begin, e.dtype,
                        e.shape,         std::nullopt};
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

void OwnedWeights::add_quantized(const std::string& name, const Tensor& values, QuantType type) {
  require(values.shape().size() == 2, "quantized tensor '" + name + "': a matrix is expected");
  const int64_t rows = values.shape()[0], cols = values.shape()[1];
  const int64_t row_bytes = quant_row_bytes(type, cols);
  Quantized q{values.shape(), type, std::vector<uint8_t>(static_cast<size_t>(rows * row_bytes))};
  for (int64_t r = 0; r < rows; ++r)
    quantize_row(type, values.span().subspan(size_t(r * cols), size_t(cols)),
                 std::span(q.blocks).subspan(size_t(r * row_bytes), size_t(row_bytes)));
  quantized_.insert_or_assign(name, std::move(q));
}

std::optional<WeightView> OwnedWeights::find(const std::string& name) const {
  if (const auto it = f32_.find(name); it != f32_.end())
    return WeightView{TensorDtype::F32, it->second.shape(),
                      reinterpret_cast<const std::byte*>(it->second.data()), std::nullopt};
  if (const auto it = bf16_.find(name); it != bf16_.end())
    return WeightView{TensorDtype::BF16, it->second.first,
                      reinterpret_cast<const std::byte*>(it->second.second.data()), std::nullopt};
  if (const auto it = quantized_.find(name); it != quantized_.end())
    return WeightView{TensorDtype::F32, it->second.shape,
                      reinterpret_cast<const std::byte*>(it->second.blocks.data()),
                      it->second.type};
  return std::nullopt;
}

std::vector<std::string> OwnedWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, t] : f32_) out.push_back(name);
  for (const auto& [name, t] : bf16_) out.push_back(name);
  for (const auto& [name, t] : quantized_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

void widen_row(const WeightView& v, int64_t r, std::span<float> out) {
  const int64_t n = std::ssize(out);
  if (v.quant) {
    const int64_t row_bytes = quant_row_bytes(*v.quant, n);
    return dequantize_row(*v.quant, v.blocks().subspan(size_t(r * row_bytes), size_t(row_bytes)),
                          out);
  }
  const auto at = static_cast<size_t>(r * n);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = v.dtype == TensorDtype::F32    ? v.f32()[at + i]
             : v.dtype == TensorDtype::BF16 ? bf16_to_float(v.bf16()[at + i])
                                            : half_to_float(v.f16()[at + i]);
}

}  // namespace moe
