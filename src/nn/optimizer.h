#pragma once
// AdamW (Loshchilov & Hutter 2019) over a ParamStore, the learning-rate schedule (linear
// warm-up, then cosine to min_lr), and global-norm gradient clipping.
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/params.h"
#include "tensor/tensor.h"

namespace moe {

struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
};

class AdamW {
 public:
  // Weight decay applies to matrices only: not to RMSNorm weights (names with "norm").
  AdamW(ParamStore& store, const AdamWOptions& options);

  // One update with learning rate lr from the store's gradients.
  void step(float lr);
  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  Tensor& first_moment() { return m_; }
  Tensor& second_moment() { return v_; }

 private:
  ParamStore& store_;
  AdamWOptions options_;
  std::vector<ParamRef> decayed_, plain_;
  Tensor m_, v_;
  int64_t steps_ = 0;
};

// lr at `step` (0-based) of `total`: linear warm-up over `warmup` steps to max_lr, then
// cosine decay to min_lr at the last step.
float learning_rate(int64_t step, int64_t total, int64_t warmup, float max_lr, float min_lr);

// Scales the store's gradients so their global L2 norm is at most max_norm (when > 0).
// Returns the norm before clipping.
double clip_grad_norm(ParamStore& store, double max_norm);

}  // namespace moe
