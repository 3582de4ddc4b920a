#include "tensor/gguf_writer.h"

#include <bit>
#include <cstring>
#include <type_traits>
#include <variant>

#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe {

static_assert(std::endian::native == std::endian::little, "GGUF files are little-endian");

namespace {

constexpr uint64_t kAlignment = 32;  // GGUF's default: no general.alignment key needed
constexpr size_t kMaxTensorName = 63;
constexpr size_t kMaxDims = 4;

uint64_t padding_to_alignment(uint64_t position) {
  return (kAlignment - position % kAlignment) % kAlignment;
}

// The header (everything before the data section) as bytes, little-endian as GGUF stores it.
class HeaderBytes {
 public:
  template <typename T>
  void put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  template <typename T>
  void put_element(const T& value) {
    if constexpr (std::is_same_v<T, std::string>)
      put_string(value);
    else if constexpr (std::is_same_v<T, bool>)
      put<uint8_t>(value ? 1 : 0);
    else
      put<T>(value);
  }
  void put_value(const std::string& key, const GgufValue& value) {
    const auto type = static_cast<uint32_t>(value.element_type());
    std::visit(
        [&](const auto& elements) {
          using Elements = std::decay_t<decltype(elements)>;
          if constexpr (std::is_same_v<Elements, std::monostate>) {
            throw Error("GGUF metadata '" + key + "' has no value");
          } else {
            if (value.is_array) {
              put<uint32_t>(static_cast<uint32_t>(GgufValueType::Array));
              put<uint32_t>(type);
              put<uint64_t>(elements.size());
            } else {
              require(elements.size() == 1, "GGUF metadata '" + key + "' is a scalar of " +
                                                std::to_string(elements.size()) + " values");
              put<uint32_t>(type);
            }
            for (const auto& e : elements)
              put_element(static_cast<typename Elements::value_type>(e));
          }
        },
        value.values);
  }
  void pad() { bytes_.resize(bytes_.size() + padding_to_alignment(bytes_.size()), 0); }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

}  // namespace

void GgufWriter::set(const std::string& key, GgufValue value) {
  require(!key.empty(), "GGUF metadata keys cannot be empty");
  require(metadata_.emplace(key, std::move(value)).second,
          "GGUF metadata '" + key + "' is set twice");
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> dims,
                            Producer producer) {
  const std::string what = "GGUF tensor '" + name + "'";
  require(!name.empty() && name.size() <= kMaxTensorName,
          what + ": names are 1 to " + std::to_string(kMaxTensorName) + " bytes");
  require(dims.size() <= kMaxDims, what + ": at most 4 dimensions");
  for (const Tensor& t : tensors_) require(t.name != name, what + " is added twice");
  const GgmlTypeTraits& traits = ggml_type_traits(type);
  int64_t elements = 1;
  for (const int64_t d : dims) {
    require(d >= 0, what + ": negative dimension");
    require(!__builtin_mul_overflow(elements, d, &elements), what + ": too many elements");
  }
  const int64_t row = dims.empty() ? 1 : dims[0];
  require(row % traits.block_size == 0, what + ": rows of " + std::to_string(row) +
                                            " values are not whole " + traits.name + " blocks of " +
                                            std::to_string(traits.block_size));
  const uint64_t bytes = static_cast<uint64_t>(elements / traits.block_size) * traits.block_bytes;
  tensors_.push_back({name, type, std::move(dims), bytes, std::move(producer)});
}

void GgufWriter::write(const std::string& path) const {
  HeaderBytes header;
  header.put<uint32_t>(0x46554747);  // "GGUF" read as a little-endian u32
  header.put<uint32_t>(3);
  header.put<uint64_t>(tensors_.size());
  header.put<uint64_t>(metadata_.size());
  for (const auto& [key, value] : metadata_) {
    header.put_string(key);
    header.put_value(key, value);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    header.put_string(t.name);
    header.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
    for (const int64_t d : t.dims) header.put<uint64_t>(static_cast<uint64_t>(d));
    header.put<uint32_t>(static_cast<uint32_t>(t.type));
    header.put<uint64_t>(offset);
    offset += t.bytes + padding_to_alignment(t.bytes);
  }
  header.pad();

  AtomicFile file(path);
  file.write(header.bytes().data(), header.bytes().size());
  std::vector<uint8_t> data;
  const uint8_t zeros[kAlignment] = {};
  for (const Tensor& t : tensors_) {
    data.clear();
    t.producer(data);
    require(data.size() == t.bytes,
            path + ": tensor '" + t.name + "' came with " + std::to_string(data.size()) +
                " bytes, its " + to_string(t.type) + " shape takes " + std::to_string(t.bytes));
    file.write(data.data(), data.size());
    file.write(zeros, padding_to_alignment(t.bytes));
  }
  file.commit();
}

}  // namespace moe
