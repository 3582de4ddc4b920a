#include "moe/experts.h"

#include <algorithm>

#include "nn/swiglu.h"

namespace moe {

Experts::Experts(int64_t experts, int64_t model, int64_t hidden, ParamStore& store,
                 const std::string& prefix)
    : experts_(experts), model_(model), hidden_(hidden), store_(store) {
  w13_ = store.add(prefix + ".w13", {experts, 2 * hidden, model});
  w2_ = store.add(prefix + ".w2", {experts, model, hidden});
}

namespace {

// Runs run(e) for every expert. Small segments go one expert per thread (BLAS single-threaded
// inside); large ones one after another, each GEMM using every thread.
template <typename Run>
void for_each_expert(int64_t experts, std::span<const int64_t> offsets, Run&& run) {
  if (offsets[experts] < 48 * experts) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t e = 0; e < experts; ++e) run(e);
  } else {
    for (int64_t e = 0; e < experts; ++e) run(e);
  }
}

}  // namespace

void Experts::forward(std::span<const float> xp, std::span<const int64_t> offsets,
                      std::span<float> yp) {
  const int64_t n = offsets[experts_], D = model_, F = hidden_;
  h13_.resize({n, 2 * F});
  act_.resize({n, F});
  auto run = [&](int64_t e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    if (rows == 0) return;
    swiglu_forward({rows, D, F}, xp.subspan(r0 * D, rows * D),
                   store_.value(w13_).subspan(e * 2 * F * D, 2 * F * D),
                   store_.value(w2_).subspan(e * D * F, D * F), h13_.span().subspan(r0 * 2 * F),
                   act_.span().subspan(r0 * F), yp.subspan(r0 * D, rows * D));
  };
  for_each_expert(experts_, offsets, run);
}

void Experts::backward(std::span<const float> xp, std::span<const int64_t> offsets,
                       std::span<const float> dyp, std::span<float> dxp, bool accumulate) {
  const int64_t n = offsets[experts_], D = model_, F = hidden_;
  dh13_.resize({n, 2 * F});
  auto run = [&](int64_t e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    auto dw13 = store_.grad(w13_).subspan(e * 2 * F * D, 2 * F * D);
    auto dw2 = store_.grad(w2_).subspan(e * D * F, D * F);
    if (rows == 0) {
      if (!accumulate) {
        std::fill(dw13.begin(), dw13.end(), 0.0f);
        std::fill(dw2.begin(), dw2.end(), 0.0f);
      }
      return;
    }
    swiglu_backward({rows, D, F}, xp.subspan(r0 * D, rows * D),
                    store_.value(w13_).subspan(e * 2 * F * D, 2 * F * D),
                    store_.value(w2_).subspan(e * D * F, D * F), h13_.span().subspan(r0 * 2 * F),
                    act_.span().subspan(r0 * F), dyp.subspan(r0 * D, rows * D),
                    dh13_.span().subspan(r0 * 2 * F), dxp.subspan(r0 * D, rows * D), dw13, dw2,
                    accumulate);
  };
  for_each_expert(experts_, offsets, run);
}

}  // namespace moe
