#pragma once
// GgufWriter: a GGUF v3 file (the layout tensor/gguf.h reads) built from metadata values and a
// table of tensors whose bytes are produced one tensor at a time while the file is written, so
// a model larger than RAM can be converted. The file appears whole or not at all (AtomicFile).
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tensor/gguf.h"

namespace moe {

// One scalar or one array of metadata, of GGUF's type for T (uint32_t -> u32, std::string ->
// string, ...).
template <typename T>
GgufValue gguf_scalar(T value) {
  GgufValue v;
  v.values = std::vector<T>{std::move(value)};
  return v;
}
template <typename T>
GgufValue gguf_array(std::vector<T> values) {
  GgufValue v;
  v.is_array = true;
  v.values = std::move(values);
  return v;
}

class GgufWriter {
 public:
  // Fills `out` with a tensor's bytes (exactly the bytes its type and dims take).
  using Producer = std::function<void(std::vector<uint8_t>& out)>;

  // Throws Error for a key set twice.
  void set(const std::string& key, GgufValue value);
  bool has(const std::string& key) const { return metadata_.contains(key); }
  // dims in GGUF's order (dims[0] the row length). Throws Error for a name used twice, one
  // longer than ggml allows, more than 4 dims, or rows that are not whole blocks of `type`.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> dims,
                  Producer producer);
  size_t tensor_count() const { return tensors_.size(); }

  // Writes the file at `path` (the metadata in key order, the tensors in the order added, each
  // at a multiple of 32 bytes) through a temporary renamed into place; throws Error naming the
  // file or the tensor whose producer gave the wrong number of bytes.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> dims;
    uint64_t bytes;
    Producer producer;
  };
  std::map<std::string, GgufValue> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace moe
