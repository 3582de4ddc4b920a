#pragma once
// Tensor: an owning, 64-byte aligned, row-major float32 array with a shape. Views are plain
// std::span<float>; shapes travel in the comments at function boundaries.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

using Shape = std::vector<int64_t>;

// Throws Error on a negative dimension or an element count that does not fit in int64.
int64_t shape_numel(std::span<const int64_t> shape);
std::string shape_str(std::span<const int64_t> shape);

// Allocations take an optional label that names the buffer when it cannot be had:
// "out of memory: attention scratch needs 4.0 GiB" (without one: "tensor of [a, b]"). A size
// beyond the machine's physical memory is refused up front, so a huge size from a file or a
// config fails with that error rather than later, in the kernel's OOM killer.
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, std::string_view label = {});  // zero-filled
  Tensor(std::initializer_list<int64_t> shape) : Tensor(Shape(shape)) {}

  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  // Changes the shape; reallocates only when the new size exceeds the capacity, so a
  // workspace resized every call stops allocating once it has seen its largest shape.
  // Contents are unspecified afterwards; a resize that throws leaves the tensor as it was.
  void resize(std::span<const int64_t> shape, std::string_view label = {});
  void resize(std::initializer_list<int64_t> shape, std::string_view label = {}) {
    resize({shape.begin(), shape.size()}, label);
  }
  void resize(const Shape& shape, std::string_view label = {}) {
    resize(std::span<const int64_t>(shape), label);
  }
  void fill(float value);

  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  int64_t numel() const { return numel_; }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  std::span<float> span() { return {data_.get(), static_cast<size_t>(numel_)}; }
  std::span<const float> span() const { return {data_.get(), static_cast<size_t>(numel_)}; }
  // Row r of the tensor viewed as [dim0, numel/dim0].
  std::span<float> row(int64_t r);
  std::span<const float> row(int64_t r) const;
  float& operator[](int64_t i) { return data_[i]; }
  float operator[](int64_t i) const { return data_[i]; }

 private:
  struct FreeDeleter {
    void operator()(float* p) const;
  };
  Shape shape_;
  int64_t numel_ = 0;
  int64_t capacity_ = 0;
  std::unique_ptr<float[], FreeDeleter> data_;
};

// True when every element is finite (no NaN, no inf).
bool all_finite(std::span<const float> values);

}  // namespace moe
