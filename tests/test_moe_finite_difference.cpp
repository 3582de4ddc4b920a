// Finite-difference check of every MoE layer variant of at most 64 tokens: the analytic
// gradient of
//   L = r_scale * sum(y * R) + aux_loss + z_loss
// with respect to the input and every parameter is compared with central differences.
// GradientsMatchCentralDifferences uses each case as written (r_scale 1). The router losses'
// coefficients there are small (0.01, 0.001), so their gradients hide under the output's:
// RouterLossAloneMatchesCentralDifferences sets one loss's coefficient to 1, the other's to 0,
// and R to 0, so that loss's gradient is all there is (an aux or z gradient 10% off fails it).
// Coordinates whose perturbation changes the routing (a top-k or capacity decision flips) are
// skipped, since L is not differentiable there; the test fails if more than 5% are skipped.
#include <gtest/gtest.h>

#include <cmath>

#include "moe/moe_layer.h"
#include "moe_cases.h"

namespace moe {
namespace {

constexpr double kStep = 2e-3;  // central-difference step (fp32 forward)
// Pass when |analytic - numeric| <= abs_tol + kRelTol * |numeric|. abs_tol covers the fp32
// round-off of L divided by 2 kStep: 1e-3 with the output term, whose sum over T*D products
// reaches ~10; for a router loss alone 1e-4 for the balancing loss (~1) and 3e-4 for the
// z-loss (up to ~10: the squared log-sum-exp).
constexpr double kAbsTol = 1e-3;
constexpr double kAbsTolAuxAlone = 1e-4;
constexpr double kAbsTolZAlone = 3e-4;
constexpr double kRelTol = 2e-2;
constexpr int64_t kMaxTokens = 64;  // every coordinate costs two forwards

struct Routing {
  std::vector<int32_t> token, expert, kept;
  bool operator==(const Routing&) const = default;
};

// Checks every coordinate of the input and of every parameter of a layer built from `cfg`.
void check_gradients(const test::MoeCase& c, const MoeConfig& cfg, float r_scale, double abs_tol) {
  const int64_t T = c.tokens, D = cfg.hidden_size, E = cfg.num_experts;

  ParamStore store;
  MoeLayer layer(cfg, store, "layer", 11);
  store.allocate();
  Rng rng(1234);
  layer.init_parameters(rng, 0.4f);
  for (float& b : layer.router().expert_bias()) b = 0.1f * rng.normal();

  Tensor x({T, D}), r({T, D}), normal({T, E}), jitter({T, D}), y({T, D}), dx({T, D});
  rng.fill_normal(x.span(), 0.0f, 1.0f);
  rng.fill_normal(r.span(), 0.0f, r_scale);
  rng.fill_normal(normal.span(), 0.0f, 1.0f);
  rng.fill_uniform(jitter.span(), 1.0f - cfg.jitter_eps, 1.0f + cfg.jitter_eps);
  MoeForwardOptions opt{c.training, c.seq_len, {normal.span(), jitter.span()}};
  opt.batch_selection_in_eval = c.batch_selection_in_eval;
  if (cfg.router_type == RouterType::ExpertChoice && !c.training && !c.batch_selection_in_eval) {
    // Evaluation by thresholds: one training forward on another batch learns them.
    Tensor other({T, D});
    rng.fill_normal(other.span(), 0.0f, 1.0f);
    layer.forward(other.span(), T, y.span(), {true, c.seq_len, {}});
  }

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

  int64_t checked = 0, skipped = 0, large = 0;
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
    // A gradient this large fails the check when 10% off.
    large += std::abs(numeric) > 1.2 * abs_tol / (0.1 - kRelTol);
    EXPECT_LE(std::abs(analytic - numeric), abs_tol + kRelTol * std::abs(numeric))
        << what << ": analytic " << analytic << " numeric " << numeric;
  };

  for (int64_t i = 0; i < T * D; ++i) check(x[i], dx[i], "x[" + std::to_string(i) + "]");
  Tensor grads = store.grads();  // copy: the loop's forwards leave the store's grads alone
  for (const auto& e : store.entries())
    for (int64_t i = 0; i < e.ref.numel; ++i)
      check(store.values()[e.ref.offset + i], grads[e.ref.offset + i],
            e.name + "[" + std::to_string(i) + "]");

  EXPECT_GT(checked, 0);
  // Some gradients whose 10% exceeds the tolerance, or the comparison proves little.
  EXPECT_GE(large, 3) << large << " of " << checked << " gradients large enough";
  EXPECT_LE(skipped * 20, checked + skipped)
      << skipped << " of " << checked + skipped << " coordinates changed the routing";
}

std::vector<std::string> small_case_names() {
  std::vector<std::string> names;
  for (const auto& [name, c] : test::load_moe_cases())
    if (c.tokens <= kMaxTokens) names.push_back(name);
  return names;
}

class MoeFiniteDifference : public testing::TestWithParam<std::string> {};

TEST_P(MoeFiniteDifference, GradientsMatchCentralDifferences) {
  const test::MoeCase c = test::load_moe_cases().at(GetParam());
  check_gradients(c, c.config, 1.0f, kAbsTol);
}

INSTANTIATE_TEST_SUITE_P(Variants, MoeFiniteDifference, testing::ValuesIn(small_case_names()),
                         [](const auto& info) { return info.param; });

// One router loss alone, coefficient 1, on the cases that have it (the balancing loss: token
// choice with an aux_loss_type; the z-loss: every case).
struct LossCase {
  std::string name;  // "<case>_aux" or "<case>_z"
  std::string moe_case;
  bool aux;
};
void PrintTo(const LossCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<LossCase> loss_cases() {
  std::vector<LossCase> out;
  for (const auto& [name, c] : test::load_moe_cases()) {
    if (c.tokens > kMaxTokens) continue;
    if (c.config.aux_loss_type != AuxLossType::None) out.push_back({name + "_aux", name, true});
    out.push_back({name + "_z", name, false});
  }
  return out;
}

class RouterLossFiniteDifference : public testing::TestWithParam<LossCase> {};

TEST_P(RouterLossFiniteDifference, RouterLossAloneMatchesCentralDifferences) {
  const test::MoeCase c = test::load_moe_cases().at(GetParam().moe_case);
  MoeConfig cfg = c.config;
  cfg.aux_loss_coeff = GetParam().aux ? 1.0f : 0.0f;
  cfg.z_loss_coeff = GetParam().aux ? 0.0f : 1.0f;
  check_gradients(c, cfg, 0.0f, GetParam().aux ? kAbsTolAuxAlone : kAbsTolZAlone);
}

INSTANTIATE_TEST_SUITE_P(Variants, RouterLossFiniteDifference, testing::ValuesIn(loss_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace moe
