// Finite-difference check of every MoE layer variant: the analytic gradient of
//   L = sum(y * R) + aux_loss + z_loss
// with respect to the input and every parameter is compared with central differences.
// Coordinates whose perturbation changes the routing (a top-k or capacity decision flips) are
// skipped, since L is not differentiable there; the test fails if more than 5% are skipped.
#include <gtest/gtest.h>

#include <cmath>

#include "moe/moe_layer.h"
#include "moe_cases.h"

namespace moe {
namespace {

constexpr double kStep = 2e-3;    // central-difference step (fp32 forward)
constexpr double kAbsTol = 1e-3;  // |analytic - numeric| <= kAbsTol + kRelTol * |numeric|
constexpr double kRelTol = 2e-2;

class MoeFiniteDifference : public testing::TestWithParam<std::string> {};

struct Routing {
  std::vector<int32_t> token, expert, kept;
  bool operator==(const Routing&) const = default;
};

TEST_P(MoeFiniteDifference, GradientsMatchCentralDifferences) {
  const test::MoeCase c = test::load_moe_cases().at(GetParam());
  const MoeConfig& cfg = c.config;
  const int64_t T = c.tokens, D = cfg.hidden_size, E = cfg.num_experts;

  ParamStore store;
  MoeLayer layer(cfg, store, "layer", 11);
  store.allocate();
  Rng rng(1234);
  layer.init_parameters(rng, 0.4f);
  for (float& b : layer.router().expert_bias()) b = 0.1f * rng.normal();

  Tensor x({T, D}), r({T, D}), normal({T, E}), jitter({T, D}), y({T, D}), dx({T, D});
  rng.fill_normal(x.span(), 0.0f, 1.0f);
  rng.fill_normal(r.span(), 0.0f, 1.0f);
  rng.fill_normal(normal.span(), 0.0f, 1.0f);
  rng.fill_uniform(jitter.span(), 1.0f - cfg.jitter_eps, 1.0f + cfg.jitter_eps);
  MoeForwardOptions opt{c.training, c.seq_len, {normal.span(), jitter.span()}};

  auto loss = [&]() {
    layer.forward(x.span(), T, y.span(), opt);
    double l = layer.loss();
    for (int64_t i = 0; i < T * D; ++i) l += static_cast<double>(y[i]) * r[i];
    return l;
  };
  auto routing = [&]() {
    auto kept = layer.dispatcher().kept_assignments();
    return Routing{layer.plan().token, layer.plan().expert, {kept.begin(), kept.end()}};
  };

  loss();
  const Routing base = routing();
  store.zero_grads();
  layer.backward(r.span(), dx.span());

  int64_t checked = 0, skipped = 0;
  auto check = [&](float& v, float analytic, const std::string& what) {
    const float saved = v;
    v = saved + static_cast<float>(kStep);
    const double plus = loss();
    const bool same_plus = routing() == base;
    v = saved - static_cast<float>(kStep);
    const double minus = loss();
    const bool same_minus = routing() == base;
    v = saved;
    if (!same_plus || !same_minus) {
      ++skipped;
      return;
    }
    ++checked;
    const double numeric = (plus - minus) / (2 * kStep);
    EXPECT_LE(std::abs(analytic - numeric), kAbsTol + kRelTol * std::abs(numeric))
        << what << ": analytic " << analytic << " numeric " << numeric;
  };

  for (int64_t i = 0; i < T * D; ++i) check(x[i], dx[i], "x[" + std::to_string(i) + "]");
  Tensor grads = store.grads();  // copy: the loop's forwards leave the store's grads alone
  for (const auto& e : store.entries())
    for (int64_t i = 0; i < e.ref.numel; ++i)
      check(store.values()[e.ref.offset + i], grads[e.ref.offset + i],
            e.name + "[" + std::to_string(i) + "]");

  EXPECT_GT(checked, 0);
  EXPECT_LE(skipped * 20, checked + skipped)
      << skipped << " of " << checked + skipped << " coordinates changed the routing";
}

INSTANTIATE_TEST_SUITE_P(Variants, MoeFiniteDifference, testing::ValuesIn(test::moe_case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moe
