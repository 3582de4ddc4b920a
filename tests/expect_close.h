#pragma once
// Element-wise comparison with a PyTorch reference tensor: passes when every
// |ours - torch| <= abs_tol + rel_tol |torch|; reports the first five misses.
#include <gtest/gtest.h>

#include <cmath>
#include <span>
#include <string>

#include "tensor/tensor.h"

namespace moe::test {

inline void expect_close(std::span<const float> ours, const Tensor& ref, const std::string& what,
                         double abs_tol, double rel_tol) {
  ASSERT_EQ(static_cast<int64_t>(ours.size()), ref.numel()) << what;
  int64_t bad = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double tol = abs_tol + rel_tol * std::abs(ref[i]);
    if (!(std::abs(ours[i] - ref[i]) <= tol) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: ours " << ours[i] << ", torch " << ref[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.numel() << " elements differ";
}

}  // namespace moe::test
