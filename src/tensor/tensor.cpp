#include "tensor/tensor.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "tensor/error.h"

namespace moe {
namespace {

// Bytes of physical memory, or the largest size_t when the system does not say.
uint64_t physical_memory_bytes() {
  static const uint64_t bytes = [] {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return static_cast<uint64_t>(SIZE_MAX);
    return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  }();
  return bytes;
}

}  // namespace

int64_t shape_numel(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("negative dimension in shape " + shape_str(shape));
    if (__builtin_mul_overflow(n, d, &n))
      throw Error("shape " + shape_str(shape) + " has more elements than fit in 64 bits");
  }
  return n;
}

std::string shape_str(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void Tensor::FreeDeleter::operator()(float* p) const {
  ::operator delete[](p, std::align_val_t(64));
}

Tensor::Tensor(Shape shape, std::string_view label) {
  resize(shape, label);
  fill(0.0f);
}

Tensor::Tensor(const Tensor& other) {
  resize(other.shape_);
  if (numel_) std::memcpy(data(), other.data(), sizeof(float) * numel_);
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) {
    resize(other.shape_);
    if (numel_) std::memcpy(data(), other.data(), sizeof(float) * numel_);
  }
  return *this;
}

void Tensor::resize(std::span<const int64_t> shape, std::string_view label) {
  const int64_t n = shape_numel(shape);
  if (n > capacity_) {
    auto what = [&] {
      return label.empty() ? "tensor of " + shape_str(shape) : std::string(label);
    };
    // n * 4 rounded up to whole 64-byte lines; a size that wraps is reported as 2^64 - 1.
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(n), sizeof(float), &bytes) ||
        __builtin_add_overflow(bytes, 63, &bytes))
      throw OutOfMemory(what(), UINT64_MAX);
    bytes = bytes / 64 * 64;
    if (bytes > physical_memory_bytes()) throw OutOfMemory(what(), bytes);
    try {
      data_.reset(static_cast<float*>(::operator new[](bytes, std::align_val_t(64))));
    } catch (const std::bad_alloc&) {
      throw OutOfMemory(what(), bytes);
    }
    capacity_ = n;
  }
  shape_.assign(shape.begin(), shape.end());  // reuses the vector's capacity
  numel_ = n;
}

void Tensor::fill(float value) {
  float* p = data();
  const int64_t n = numel_;
#pragma omp parallel for simd schedule(static) if (n > (1 << 20))
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

std::span<float> Tensor::row(int64_t r) {
  const int64_t cols = shape_.empty() || shape_[0] == 0 ? 0 : numel_ / shape_[0];
  return {data() + r * cols, static_cast<size_t>(cols)};
}

std::span<const float> Tensor::row(int64_t r) const {
  const int64_t cols = shape_.empty() || shape_[0] == 0 ? 0 : numel_ / shape_[0];
  return {data() + r * cols, static_cast<size_t>(cols)};
}

bool all_finite(std::span<const float> values) {
  bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static) if (values.size() > 65536)
  for (size_t i = 0; i < values.size(); ++i) ok = ok && std::isfinite(values[i]);
  return ok;
}

}  // namespace moe
