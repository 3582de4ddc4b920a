#include "tensor/mapped_safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace moe {
namespace {

// Closes the descriptor however the constructor leaves.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

template <typename T>
std::span<const T> typed(const WeightView& v, TensorDtype want) {
  require(!v.quant && v.dtype == want,
          "tensor holds " + v.type_name() + ", not " + std::string(to_string(want)));
  return {reinterpret_cast<const T*>(v.data), static_cast<size_t>(v.numel())};
}

}  // namespace

int64_t WeightView::bytes() const {
  if (!quant) return numel() * static_cast<int64_t>(dtype_bytes(dtype));
  require(!shape.empty() && shape.back() > 0, "a quantized tensor has rows");
  return numel() / shape.back() * quant_row_bytes(*quant, shape.back());
}

std::string WeightView::type_name() const {
  return quant ? std::string(quant_layout(*quant).name) : std::string(to_string(dtype));
}

std::span<const uint8_t> WeightView::blocks() const {
  require(quant.has_value(), "tensor holds " + type_name() + ", not quantized blocks");
  return {reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(bytes())};
}

std::span<const float> WeightView::f32() const {
  return typed<float>(*this, TensorDtype::F32);
}
std::span<const uint16_t> WeightView::bf16() const {
  return typed<uint16_t>(*this, TensorDtype::BF16);
}
std::span<const uint16_t> WeightView::f16() const {
  return typed<uint16_t>(*this, TensorDtype::F16);
}

MappedSafetensors::MappedSafetensors(const std::string& path) : path_(path) {
  header_ = read_safetensors_header(path);  // every check of the format, before any mapping
  FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  require(file.fd >= 0, path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  require(::fstat(file.fd, &st) == 0 && S_ISREG(st.st_mode), path + ": not a regular file");
  require(static_cast<uint64_t>(st.st_size) == header_.data_start + header_.data_bytes,
          path + ": changed while it was being opened");
  for (const auto& [name, entry] : header_.tensors)
    require((header_.data_start + entry.begin) % dtype_bytes(entry.dtype) == 0,
            path + ": tensor '" + name + "' starts at byte " +
                std::to_string(header_.data_start + entry.begin) + ", not aligned to its " +
                to_string(entry.dtype) + " elements: cannot be mapped");

  size_ = static_cast<size_t>(st.st_size);
  void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, file.fd, 0);
  require(mapped != MAP_FAILED, path + ": cannot map: " + std::strerror(errno));
  base_ = static_cast<const std::byte*>(mapped);
}

MappedSafetensors::~MappedSafetensors() {
  unmap();
}

MappedSafetensors::MappedSafetensors(MappedSafetensors&& other) noexcept
    : path_(std::move(other.path_)),
      header_(std::move(other.header_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedSafetensors& MappedSafetensors::operator=(MappedSafetensors&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    header_ = std::move(other.header_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedSafetensors::unmap() {
  if (base_) ::munmap(const_cast<std::byte*>(base_), size_);
  base_ = nullptr;
  size_ = 0;
}

WeightView MappedSafetensors::view(const std::string& name) const {
  const auto it = header_.tensors.find(name);
  require(it != header_.tensors.end(), path_ + ": missing tensor '" + name + "'");
  const SafetensorsEntry& e = it->second;
  return WeightView{e.dtype, e.shape, base_ + header_.data_start + e.begin, std::nullopt};
}

}  // namespace moe
