#include "tensor/params.h"

#include "tensor/error.h"

namespace moe {

ParamRef ParamStore::add(const std::string& name, const Shape& shape) {
  require(!allocated_, "parameter '" + name + "' registered after allocation");
  for (const auto& e : entries_)
    require(e.name != name, "parameter '" + name + "' registered twice");
  // Every tensor starts on a 64-byte boundary so BLAS sees aligned rows. Shapes come from
  // configs that may be hostile: the running total must not wrap.
  const int64_t numel = shape_numel(shape);
  int64_t offset = 0, end = 0;
  if (__builtin_add_overflow(total_, 15, &offset) ||
      __builtin_add_overflow(offset / 16 * 16, numel, &end))
    throw Error("parameter '" + name + "' " + shape_str(shape) +
                ": the model's parameter count overflows 64 bits");
  ParamRef ref{offset / 16 * 16, numel};
  entries_.push_back({name, shape, ref});
  total_ = end;
  return ref;
}

void ParamStore::allocate(Gradients gradients) {
  require(!allocated_, "ParamStore allocated twice");
  values_ = Tensor({total_}, "parameters");
  have_grads_ = gradients == Gradients::Yes;
  if (have_grads_) grads_ = Tensor({total_}, "gradients");
  allocated_ = true;
}

void ParamStore::require_grads() const {
  if (!have_grads_) throw Error("parameters allocated without gradients (inference only)");
}

const ParamStore::Entry& ParamStore::entry(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return e;
  throw Error("no parameter named '" + name + "'");
}

}  // namespace moe
