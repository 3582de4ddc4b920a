#pragma once
// Where inference finds its weights, by Hugging Face tensor name: a checkpoint's safetensors
// files mapped into memory (nothing copied; bf16 stays bf16), or tensors held in memory (a
// random model for benchmarks). Either way a weight is a WeightView: dtype, shape, bytes.
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "infer/expert_cache.h"
#include "tensor/mapped_safetensors.h"
#include "tensor/tensor.h"

namespace moe {

// out: [n] = row r of v ([rows, n]) in fp32, whatever v holds (fp32, bf16, fp16 or blocks).
void widen_row(const WeightView& v, int64_t r, std::span<float> out);

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::optional<WeightView> find(const std::string& name) const = 0;
  // Throws Error naming the tensor and where it was looked for.
  WeightView at(const std::string& name) const;
  virtual std::string describe() const = 0;            // for errors: the folder or "random weights"
  virtual std::vector<std::string> names() const = 0;  // every tensor's name, sorted
  // Where a tensor lies in a file, for reading it without the mapping (the expert cache);
  // nullopt for tensors that are not in a file.
  virtual std::optional<TensorLocation> locate(const std::string&) const { return std::nullopt; }
};

// The safetensors files of a checkpoint folder, each mapped read-only.
class MappedCheckpoint : public WeightSource {
 public:
  // files: the shards (one for a plain model.safetensors); a tensor found in two is an Error.
  MappedCheckpoint(std::string folder, const std::vector<std::string>& files);
  std::optional<WeightView> find(const std::string& name) const override;
  std::string describe() const override { return folder_; }
  std::optional<TensorLocation> locate(const std::string& name) const override;
  std::vector<std::string> names() const override;

 private:
  std::string folder_;
  std::vector<MappedSafetensors> files_;
  std::map<std::string, size_t> file_of_;  // tensor name -> index into files_
};

// Tensors owned in memory: fp32, bf16 (held as raw 16-bit words) or ggml's quantized blocks.
class OwnedWeights : public WeightSource {
 public:
  void add_f32(const std::string& name, Tensor values);
  void add_bf16(const std::string& name, Shape shape, std::vector<uint16_t> bits);
  // values: [rows, cols] -> each row quantized to `type` (quantize_row).
  void add_quantized(const std::string& name, const Tensor& values, QuantType type);
  std::optional<WeightView> find(const std::string& name) const override;
  std::string describe() const override { return "weights in memory"; }
  std::vector<std::string> names() const override;

 private:
  std::map<std::string, Tensor> f32_;
  std::map<std::string, std::pair<Shape, std::vector<uint16_t>>> bf16_;
  struct Quantized {
    Shape shape;
    QuantType type;
    std::vector<uint8_t> blocks;
  };
  std::map<std::string, Quantized> quantized_;
};

}  // namespace moe
