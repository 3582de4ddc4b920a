#pragma once
// safetensors: 8-byte little-endian header length N, N bytes of JSON, then raw tensor data.
// The reader validates everything the header claims (shapes, dtypes, offsets, their overflow)
// before it trusts it and names the offending tensor in its error. F32, F16 and BF16 are read
// as float.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace moe {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;

  const Tensor& at(const std::string& name) const;  // throws Error naming a missing tensor
  bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

// The element types the reader accepts (anything else is an error naming the tensor).
enum class TensorDtype { F32, F16, BF16 };
inline size_t dtype_bytes(TensorDtype d) { return d == TensorDtype::F32 ? 4 : 2; }
inline const char* to_string(TensorDtype d) {
  return d == TensorDtype::F32 ? "F32" : d == TensorDtype::F16 ? "F16" : "BF16";
}

// A header longer than this is refused before it is read.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// One tensor as the header describes it; begin/end are byte offsets into the data section.
struct SafetensorsEntry {
  TensorDtype dtype;
  Shape shape;
  uint64_t begin, end;
};

struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // where the data section starts in the file: 8 + header length
};

// Validates a header against the size of its file: `prefix` holds at least the file's first
// 8 + N bytes (the length and the JSON). Every check of the format is here; the readers below
// only copy or map what it accepted.
SafetensorsHeader parse_safetensors_header(std::span<const char> prefix, uint64_t file_size,
                                           const std::string& source);

// Parses a whole file already in memory; `source` names it in errors.
SafetensorsFile parse_safetensors(const std::vector<char>& bytes, const std::string& source);
SafetensorsFile read_safetensors(const std::string& path);

// How write_safetensors stores the fp32 tensors: as they are, or rounded to bfloat16 (to
// nearest, ties to even; a value beyond bfloat16's range is an Error naming the tensor).
enum class StoredDtype { F32, BF16 };

// Writes the tensors atomically: a temporary file beside `path`, fsync, rename over `path`.
void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {},
                       StoredDtype dtype = StoredDtype::F32);

}  // namespace moe
