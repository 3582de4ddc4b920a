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
inline size_t dtype_bytes(TensorDtype d) {
  return d == TensorDtype::F32 ? 4 : 2;
}
inline const char* to_string(TensorDtype d) {
  return d == TensorDtype::F32 ? "F32" : d == TensorDtype::F16 ? "F16" : "BF16";
}

// One tensor as the header describes it: bytes [begin, end) of the data section.
struct SafetensorsEntry {
  TensorDtype dtype;
  Shape shape;
  uint64_t begin, end;
};

// A file's header, validated (the same checks as parse_safetensors) without reading the data:
// the data section starts at byte data_start and holds data_bytes bytes, every one of them
// covered by exactly one tensor.
struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0, data_bytes = 0;
};

// head: the file's first bytes (at least the 8-byte length and the JSON it announces, when the
// file holds them); file_size: the whole file's size in bytes.
SafetensorsHeader parse_safetensors_header(std::span<const char> head, uint64_t file_size,
                                           const std::string& source);
// Reads only the header of the file at `path`.
SafetensorsHeader read_safetensors_header(const std::string& path);
// Reads tensor `name` of `header` (read from `path`) into out (its element count), converted
// to float.
void read_safetensors_tensor(const std::string& path, const SafetensorsHeader& header,
                             const std::string& name, std::span<float> out);
// raw: the tensor's bytes as stored (little-endian) -> out: as float.
void convert_to_float(TensorDtype dtype, std::span<const char> raw, std::span<float> out);

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
