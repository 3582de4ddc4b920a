#include "tensor/params.h"

#include "tensor/error.h"

namespace moe {

ParamRef ParamStore::add(const std::string& name, const Shape& shape) {
  require(!allocated_, "parameter '" + name + "' registered after allocation");
  for (const auto& e : entries_)
    require(e.name != name, "parameter '" + name + "' registered twice");
  // Every tensor starts on a 64-byte boundary so BLAS sees aligned rows.
  total_ = (total_ + 15) / 16 * 16;
  ParamRef ref{total_, shape_numel(shape)};
  entries_.push_back({name, shape, ref});
  total_ += ref.numel;
  return ref;
}

void ParamStore::allocate() {
  require(!allocated_, "ParamStore allocated twice");
  values_ = Tensor({total_});
  grads_ = Tensor({total_});
  allocated_ = true;
}

const ParamStore::Entry& ParamStore::entry(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return e;
  throw Error("no parameter named '" + name + "'");
}

}  // namespace moe
