#pragma once
// GGUF, llama.cpp's model file: typed metadata, a table of tensors, then each tensor's bytes at
// an aligned offset. GgufFile maps the file read-only and views the tensors in place, so block-
// quantized weights stay as their blocks and a file larger than free RAM can be used.
// parse_gguf checks everything the header claims (counts, lengths, types, shapes, offsets) with
// overflow-safe arithmetic before anything trusts it, and names the file and the field in its
// one-line Error. Versions 2 and 3, little-endian (the layout llama.cpp writes).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

namespace moe {

// ggml's tensor element types, with ggml's numbers (the gaps are types ggml removed).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
  Q2_0 = 42,
};

// How a type lays out its elements: blocks of block_size elements in block_bytes bytes each
// (one element per block for the plain types such as F32).
struct GgmlTypeTraits {
  const char* name;  // ggml's name: "f32", "q4_K", ...
  uint32_t block_size;
  uint32_t block_bytes;
};

// The traits of the ggml type numbered `id`; nullptr for a number ggml does not (or no longer)
// define, so that a reader can name the number it refuses.
const GgmlTypeTraits* find_ggml_type(uint32_t id);
const GgmlTypeTraits& ggml_type_traits(GgmlType type);
inline const char* to_string(GgmlType type) {
  return ggml_type_traits(type).name;
}

// The types of metadata values, with GGUF's numbers.
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
const char* to_string(GgufValueType type);  // "u8", "i32", "f64", "bool", "string", "array"

// The elements of one metadata value. The alternative's index is the elements' GgufValueType
// (Array's slot holds nothing: llama.cpp refuses arrays of arrays, and so does this reader).
using GgufValues =
    std::variant<std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>,
                 std::vector<int16_t>, std::vector<uint32_t>, std::vector<int32_t>,
                 std::vector<float>, std::vector<bool>, std::vector<std::string>, std::monostate,
                 std::vector<uint64_t>, std::vector<int64_t>, std::vector<double>>;

// The GgufValueType whose elements are T (uint32_t -> U32, std::string -> String, ...).
template <typename T, size_t I = 0>
constexpr GgufValueType gguf_value_type_of() {
  if constexpr (std::is_same_v<std::variant_alternative_t<I, GgufValues>, std::vector<T>>)
    return static_cast<GgufValueType>(I);
  else
    return gguf_value_type_of<T, I + 1>();
}

// One metadata value: a scalar (exactly one element) or an array of one element type.
struct GgufValue {
  bool is_array = false;
  GgufValues values;

  GgufValueType element_type() const { return static_cast<GgufValueType>(values.index()); }
  std::string type_name() const;  // "u32", "array of string"
};

// One entry of the tensor table, checked: its bytes lie inside the file, aligned, and overlap
// no other tensor's.
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  // GGUF's order: dims[0] is the row length, the index that moves fastest in memory (the
  // reverse of a row-major shape). At most 4; none for a scalar.
  std::vector<int64_t> dims;
  int64_t elements = 1;  // the product of dims
  uint64_t offset = 0;   // of its first byte, from the start of the data section
  uint64_t bytes = 0;    // elements / block size * bytes per block
};

// A GGUF file's header, checked: its metadata, `general.alignment` and the tensor table.
class GgufHeader {
 public:
  const std::string& source() const { return source_; }  // the file, as errors name it
  uint32_t version() const { return version_; }
  // general.alignment (32 when absent): every tensor's offset is a multiple of it.
  uint32_t alignment() const { return alignment_; }
  uint64_t data_start() const { return data_start_; }  // the data section's first file byte

  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  bool has(std::string_view key) const { return metadata_.find(key) != metadata_.end(); }
  const GgufValue* find(std::string_view key) const;  // nullptr when absent
  // The value of `key` as a scalar of type T, or its array of T; an Error naming the file, the
  // key, the type expected and the type found (or that the key is missing) otherwise. Strict:
  // a u32 is not read as a u64 or an i32.
  template <typename T>
  T get(std::string_view key) const {
    return elements_of<T>(key, false).front();
  }
  template <typename T>
  const std::vector<T>& get_array(std::string_view key) const {
    return elements_of<T>(key, true);
  }

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // in file order
  const GgufTensorInfo* find_tensor(std::string_view name) const;          // nullptr when absent
  const GgufTensorInfo& tensor(std::string_view name) const;               // throws Error naming it

 private:
  friend GgufHeader parse_gguf(std::span<const std::byte> file, const std::string& source);

  template <typename T>
  const std::vector<T>& elements_of(std::string_view key, bool array) const {
    const GgufValue* value = find(key);
    if (value && value->is_array == array)
      if (const auto* elements = std::get_if<std::vector<T>>(&value->values)) return *elements;
    throw_not_of_type(key, gguf_value_type_of<T>(), array);
  }
  [[noreturn]] void throw_not_of_type(std::string_view key, GgufValueType type, bool array) const;

  std::string source_;
  uint32_t version_ = 3;
  uint32_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;  // name -> its index in tensors_
};

// file: a whole GGUF file's bytes; `source` names it in errors. Throws Error on anything the
// format does not allow or llama.cpp would refuse.
GgufHeader parse_gguf(std::span<const std::byte> file, const std::string& source);

// A GGUF file mapped read-only; its tensors are views of the page cache, not copies.
class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // throws Error naming the file

  const std::string& path() const { return header_.source(); }
  const GgufHeader& header() const { return header_; }
  // A tensor's bytes as stored (blocks for the quantized types), inside the mapping: valid while
  // this object lives. `tensor` must come from this file's header.
  std::span<const std::byte> data(const GgufTensorInfo& tensor) const;
  std::span<const std::byte> data(std::string_view name) const;  // throws Error naming it

 private:
  // The mapping of the whole file, unmapped by its destructor (also when parsing throws).
  class Mapping {
   public:
    explicit Mapping(const std::string& path);
    ~Mapping();
    Mapping(Mapping&& other) noexcept;
    Mapping& operator=(Mapping&& other) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    std::span<const std::byte> bytes() const { return {base_, size_}; }

   private:
    const std::byte* base_ = nullptr;
    size_t size_ = 0;
  };

  Mapping mapping_;
  GgufHeader header_;
};

}  // namespace moe
