#pragma once
// A safetensors file mapped read-only into memory: its tensors are views of the page cache,
// not copies, so a checkpoint larger than free RAM can run and bf16 weights stay bf16. The
// header is checked as parse_safetensors checks it, and each tensor's data must be aligned to
// its element size (safetensors writers pad the header to 8 bytes, so real files are).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "tensor/quant.h"
#include "tensor/safetensors.h"

namespace moe {

// A tensor in a mapped file: its dtype, shape and first byte. Valid while the file is mapped.
struct WeightView {
  TensorDtype dtype = TensorDtype::F32;
  Shape shape;
  const std::byte* data = nullptr;
  // Set for ggml's block-quantized rows (a GGUF tensor): each row of shape.back() values is
  // quant_row_bytes(*quant, shape.back()) bytes, and dtype is not used.
  std::optional<QuantType> quant;

  int64_t numel() const { return shape_numel(shape); }
  int64_t bytes() const;
  std::string type_name() const;            // "F32", "BF16", "F16", or ggml's "q4_K", ...
  std::span<const float> f32() const;       // throws unless dtype is F32
  std::span<const uint16_t> bf16() const;   // throws unless dtype is BF16
  std::span<const uint16_t> f16() const;    // throws unless dtype is F16
  std::span<const uint8_t> blocks() const;  // throws unless quantized: every row's blocks
};

class MappedSafetensors {
 public:
  explicit MappedSafetensors(const std::string& path);  // throws Error naming the file
  ~MappedSafetensors();
  MappedSafetensors(MappedSafetensors&& other) noexcept;
  MappedSafetensors& operator=(MappedSafetensors&& other) noexcept;
  MappedSafetensors(const MappedSafetensors&) = delete;
  MappedSafetensors& operator=(const MappedSafetensors&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  bool has(const std::string& name) const { return header_.tensors.count(name) != 0; }
  WeightView view(const std::string& name) const;  // throws Error naming a missing tensor

 private:
  void unmap();

  std::string path_;
  SafetensorsHeader header_;
  const std::byte* base_ = nullptr;  // the mapping (munmap'd by the destructor), not a heap block
  size_t size_ = 0;
};

}  // namespace moe
