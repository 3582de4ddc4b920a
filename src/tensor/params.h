#pragma once
// ParamStore: all parameters of a model in one contiguous buffer, with a gradient buffer of
// the same layout and a name per tensor (llm.c's discipline). Layers register their tensors
// first, the owner allocates once, then layers reach their slices through ParamRef.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace moe {

struct ParamRef {
  int64_t offset = 0;
  int64_t numel = 0;
};

class ParamStore {
 public:
  struct Entry {
    std::string name;
    Shape shape;
    ParamRef ref;
  };

  // Registers a tensor; only before allocate().
  ParamRef add(const std::string& name, const Shape& shape);
  enum class Gradients { Yes, No };
  // Allocates values and (unless Gradients::No: a model only run, never trained) gradients,
  // both zero.
  void allocate(Gradients gradients = Gradients::Yes);
  bool allocated() const { return allocated_; }

  std::span<float> value(ParamRef r) { return values_.span().subspan(r.offset, r.numel); }
  std::span<const float> value(ParamRef r) const {
    return values_.span().subspan(r.offset, r.numel);
  }
  std::span<float> grad(ParamRef r) {
    require_grads();
    return grads_.span().subspan(r.offset, r.numel);
  }
  std::span<const float> grad(ParamRef r) const {
    require_grads();
    return grads_.span().subspan(r.offset, r.numel);
  }

  Tensor& values() { return values_; }
  Tensor& grads() { return grads_; }
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry& entry(const std::string& name) const;  // throws Error naming a missing one
  void zero_grads() { grads_.fill(0.0f); }

 private:
  void require_grads() const;  // throws Error when allocated without gradients

  std::vector<Entry> entries_;
  int64_t total_ = 0;
  bool allocated_ = false;
  bool have_grads_ = false;
  Tensor values_;
  Tensor grads_;
};

}  // namespace moe
