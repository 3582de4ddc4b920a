#pragma once
// Experts: E SwiGLU FFNs run as a grouped GEMM over the contiguous per-expert segments the
// Dispatcher builds. Weights: w13 [E, 2F, D] (w1 and w3 of each expert stacked), w2 [E, D, F].
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tensor/params.h"
#include "tensor/tensor.h"

namespace moe {

class Experts {
 public:
  Experts(int64_t experts, int64_t model, int64_t hidden, ParamStore& store,
          const std::string& prefix);

  // xp: [n, D] with expert e's rows at [offsets[e], offsets[e+1]) -> yp: [n, D]
  void forward(std::span<const float> xp, std::span<const int64_t> offsets, std::span<float> yp);
  // dyp: [n, D] -> dxp: [n, D]; weight gradients accumulated, or overwritten (experts with no
  // rows get zero) when !accumulate.
  void backward(std::span<const float> xp, std::span<const int64_t> offsets,
                std::span<const float> dyp, std::span<float> dxp, bool accumulate);

  ParamRef w13() const { return w13_; }
  ParamRef w2() const { return w2_; }
  int64_t hidden() const { return hidden_; }

 private:
  template <typename Run>
  void for_each_expert(std::span<const int64_t> offsets, Run&& run);

  int64_t experts_, model_, hidden_;
  ParamStore& store_;
  ParamRef w13_, w2_;
  Tensor h13_;                     // [n, 2F] saved
  Tensor act_;                     // [n, F] saved
  Tensor dh13_;                    // [n, 2F] scratch
  std::vector<int64_t> schedule_;  // experts run one per thread, largest first
};

}  // namespace moe
