// The balancing losses, z-loss and bias update against hand-computed values, and their
// gradients against finite differences (double precision inputs kept small).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "moe/losses.h"
#include "tensor/rng.h"

namespace moe {
namespace {

TEST(BalanceLoss, HandComputedSwitchValue) {
  // T = 2, E = 2, k = 1: token 0 -> expert 0, token 1 -> expert 0.
  // f = [1, 0], P = [(0.7 + 0.6) / 2, (0.3 + 0.4) / 2] = [0.65, 0.35]; L = a * 2 * 0.65.
  const std::vector<float> probs = {0.7f, 0.3f, 0.6f, 0.4f};
  const std::vector<int32_t> sel = {0, 0};
  EXPECT_NEAR(balance_loss(probs, sel, 2, 2, 1, 2, 0.1f, {}), 0.1 * 2 * 0.65, 1e-7);
}

TEST(BalanceLoss, SequenceLevelAveragesPerSequence) {
  // Two sequences of one token each: loss is the mean of the per-sequence Switch losses.
  const std::vector<float> probs = {0.7f, 0.3f, 0.2f, 0.8f};
  const std::vector<int32_t> sel = {0, 1};
  const float seq = balance_loss(probs, sel, 2, 2, 1, 1, 1.0f, {});
  EXPECT_NEAR(seq, (2 * 0.7 + 2 * 0.8) / 2, 1e-6);
  const float batch = balance_loss(probs, sel, 2, 2, 1, 2, 1.0f, {});
  EXPECT_NEAR(batch, 2 * (0.5 * 0.45 + 0.5 * 0.55), 1e-6);
}

TEST(BalanceLoss, GradientMatchesFiniteDifference) {
  const int64_t T = 6, E = 4, k = 2;
  Rng rng(3);
  std::vector<float> probs(T * E), grad(T * E, 0.0f);
  rng.fill_uniform(probs, 0.0f, 1.0f);
  std::vector<int32_t> sel = {0, 1, 2, 3, 0, 2, 1, 3, 0, 1, 2, 0};
  balance_loss(probs, sel, T, E, k, 3, 0.01f, grad);
  for (int64_t i = 0; i < T * E; ++i) {
    const float saved = probs[i];
    probs[i] = saved + 1e-2f;
    const double plus = balance_loss(probs, sel, T, E, k, 3, 0.01f, {});
    probs[i] = saved - 1e-2f;
    const double minus = balance_loss(probs, sel, T, E, k, 3, 0.01f, {});
    probs[i] = saved;
    EXPECT_NEAR(grad[i], (plus - minus) / 2e-2, 1e-6) << i;  // linear in probs
  }
}

TEST(ZLoss, ValueAndGradient) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, -1.0f, 0.0f, 0.5f};
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double lse1 = std::log(std::exp(-1.0) + std::exp(0.0) + std::exp(0.5));
  EXPECT_NEAR(z_loss(logits, 2, 3, 0.001f, {}), 0.001 * (lse0 * lse0 + lse1 * lse1) / 2, 1e-7);
  std::vector<float> grad(6, 0.0f), l = logits;
  z_loss(l, 2, 3, 0.001f, grad);
  for (int i = 0; i < 6; ++i) {
    l[i] = logits[i] + 1e-3f;
    const double plus = z_loss(l, 2, 3, 0.001f, {});
    l[i] = logits[i] - 1e-3f;
    const double minus = z_loss(l, 2, 3, 0.001f, {});
    l[i] = logits[i];
    EXPECT_NEAR(grad[i], (plus - minus) / 2e-3, 2e-6) << i;
  }
}

TEST(ExpertBias, MovesTowardTheMeanLoad) {
  std::vector<float> bias = {0.0f, 0.0f, 0.0f, 0.5f};
  const std::vector<int64_t> load = {10, 2, 6, 6};  // mean 6
  update_expert_bias(bias, load, 0.001f);
  EXPECT_FLOAT_EQ(bias[0], -0.001f);  // overloaded: selected less
  EXPECT_FLOAT_EQ(bias[1], 0.001f);   // underloaded: selected more
  EXPECT_FLOAT_EQ(bias[2], 0.0f);
  EXPECT_FLOAT_EQ(bias[3], 0.5f);
}

}  // namespace
}  // namespace moe
