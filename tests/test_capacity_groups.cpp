// capacity_groups: a training batch split into G groups, each with its own capacity and its
// own batch-level balancing loss (expert choice: its own selection), is the layout an
// expert-parallel run over G ranks computes. Checked here against the plain layer run on each
// group alone: outputs, drops, the router losses (the mean over groups), every gradient and
// expert choice's thresholds (the mean over groups of each group's estimate), within
// 1e-5 (1 + |value|) (the experts' GEMMs and the gradient sums see the groups' rows together
// or apart: another fp32 summation order).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "moe/moe_layer.h"
#include "tensor/error.h"

namespace moe {
namespace {

constexpr float kTol = 1e-5f;
// |a - b| <= kTol (1 + |b|)
#define EXPECT_CLOSE(a, b, what)                              \
  ASSERT_LE(std::fabs((a) - (b)), kTol*(1.0f + std::fabs(b))) \
      << what << ": " << (a) << " vs " << (b)

MoeConfig grouped_config(int64_t groups) {
  MoeConfig c;
  c.hidden_size = 16;
  c.moe_intermediate_size = 12;
  c.num_experts = 4;
  c.top_k = 2;
  c.capacity_factor = 1.0;  // tight enough that every group drops something
  c.drop_policy = DropPolicy::Probs;
  c.aux_loss_type = AuxLossType::Switch;
  c.aux_loss_coeff = 0.5f;  // large, so a wrong loss window shows in the gradients
  c.capacity_groups = groups;
  return c;
}

struct Layer {
  Layer(const MoeConfig& c) : layer(c, store, "moe", 3) {
    store.allocate();
    Rng rng(11);
    layer.init_parameters(rng, 0.3f);
  }
  ParamStore store;
  MoeLayer layer;
};

TEST(CapacityGroups, TwoGroupsEqualEachGroupAlone) {
  constexpr int64_t T = 48, half = T / 2, D = 16;
  Layer grouped(grouped_config(2)), alone(grouped_config(1));
  Tensor x({T, D}), dy({T, D}), y_grouped({T, D}), dx_grouped({T, D}), y_alone({T, D}),
      dx_alone({T, D});
  Rng rng(4);
  rng.fill_normal(x.span(), 0, 1);
  rng.fill_normal(dy.span(), 0, 1);

  const RoutingStats& g = grouped.layer.forward(x.span(), T, y_grouped.span());
  const int64_t dropped_grouped = g.dropped;
  const float aux_grouped = g.aux_loss;
  grouped.layer.backward(dy.span(), dx_grouped.span());
  ASSERT_GT(dropped_grouped, 0) << "no drops: the test would not see the grouping";

  // The plain layer on each half; the grouped loss is the mean over the groups, so each half's
  // router losses enter with weight 1/2.
  int64_t dropped_alone = 0;
  float aux_alone = 0;
  for (int64_t h = 0; h < 2; ++h) {
    const auto rows = [&](Tensor& t) { return t.span().subspan(h * half * D, half * D); };
    const RoutingStats& s = alone.layer.forward(rows(x), half, rows(y_alone));
    dropped_alone += s.dropped;
    aux_alone += s.aux_loss / 2;
    alone.layer.backward(rows(dy), rows(dx_alone), /*accumulate_grads=*/true, 0.5f);
  }
  EXPECT_EQ(dropped_grouped, dropped_alone);
  EXPECT_CLOSE(aux_grouped, aux_alone, "aux loss");
  for (int64_t i = 0; i < T * D; ++i) {
    EXPECT_CLOSE(y_grouped[i], y_alone[i], "y at " << i);
    EXPECT_CLOSE(dx_grouped[i], dx_alone[i], "dx at " << i);
  }
  const Tensor& ga = grouped.store.grads();
  const Tensor& gb = alone.store.grads();
  for (int64_t i = 0; i < ga.numel(); ++i) EXPECT_CLOSE(ga[i], gb[i], "gradient " << i);
}

MoeConfig expert_choice_config(int64_t groups) {
  MoeConfig c = grouped_config(groups);
  c.router_type = RouterType::ExpertChoice;
  c.aux_loss_type = AuxLossType::None;
  c.z_loss_coeff = 0.5f;  // large, so a wrong weighting of the groups shows in the gradients
  return c;
}

// Expert choice: each expert takes its top-C of each group's tokens, C from the group's T/G;
// the gates' gradients reach the router; the thresholds move toward the mean over the groups
// of each expert's last pick; evaluation by batch selection uses the groups as training does.
TEST(CapacityGroups, ExpertChoiceTwoGroupsEqualEachGroupAlone) {
  constexpr int64_t T = 48, half = T / 2, D = 16, E = 4;
  // One layer per half, so that each estimates its thresholds from its half alone.
  Layer grouped(expert_choice_config(2)), first(expert_choice_config(1)),
      second(expert_choice_config(1)), whole(expert_choice_config(1));
  Layer* alone[] = {&first, &second};
  Tensor x({T, D}), dy({T, D}), y_grouped({T, D}), dx_grouped({T, D}), y_alone({T, D}),
      dx_alone({T, D}), y_whole({T, D});
  Rng rng(4);
  rng.fill_normal(x.span(), 0, 1);
  rng.fill_normal(dy.span(), 0, 1);
  const auto rows = [&](Tensor& t, int64_t h) { return t.span().subspan(h * half * D, half * D); };

  const RoutingStats& g = grouped.layer.forward(x.span(), T, y_grouped.span());
  const int64_t C = grouped.layer.config().capacity(half, true);
  ASSERT_EQ(C, 12);  // ceil(1.0 * 24 * 2 / 4) per group
  for (int64_t e = 0; e < E; ++e) EXPECT_EQ(g.kept_per_expert[e], 2 * C) << "expert " << e;
  const float z_grouped = g.z_loss;
  grouped.layer.backward(dy.span(), dx_grouped.span());
  // The whole batch's selection routes otherwise, or the comparison below would prove nothing.
  whole.layer.forward(x.span(), T, y_whole.span());
  float apart = 0;
  for (int64_t i = 0; i < T * D; ++i) apart = std::max(apart, std::fabs(y_whole[i] - y_grouped[i]));
  ASSERT_GT(apart, 1e-2f) << "the groups select what the whole batch does";

  // The grouped router losses are means over the groups: each half's enters with weight 1/2.
  float z_alone = 0;
  for (int64_t h = 0; h < 2; ++h) {
    z_alone += alone[h]->layer.forward(rows(x, h), half, rows(y_alone, h)).z_loss / 2;
    alone[h]->layer.backward(rows(dy, h), rows(dx_alone, h), /*accumulate_grads=*/true, 0.5f);
  }
  EXPECT_CLOSE(z_grouped, z_alone, "z loss");
  for (int64_t i = 0; i < T * D; ++i) {
    EXPECT_CLOSE(y_grouped[i], y_alone[i], "y at " << i);
    EXPECT_CLOSE(dx_grouped[i], dx_alone[i], "dx at " << i);
  }
  const Tensor& ga = grouped.store.grads();
  for (int64_t i = 0; i < ga.numel(); ++i)
    EXPECT_CLOSE(ga[i], first.store.grads()[i] + second.store.grads()[i], "gradient " << i);
  const float* router_grad = grouped.store.grad(grouped.layer.router().weight()).data();
  ASSERT_GT(std::fabs(router_grad[0]) + std::fabs(router_grad[1]), 0.0f);

  // Thresholds: the first forward sets them, a second moves them; both linear in the groups'
  // estimates, so the grouped layer's stay the mean of the two halves' layers'.
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      rng.fill_normal(x.span(), 0, 1);
      grouped.layer.forward(x.span(), T, y_grouped.span());
      for (int64_t h = 0; h < 2; ++h) alone[h]->layer.forward(rows(x, h), half, rows(y_alone, h));
    }
    for (int64_t e = 0; e < E; ++e)
      EXPECT_CLOSE(grouped.layer.router().expert_threshold()[e],
                   (first.layer.router().expert_threshold()[e] +
                    second.layer.router().expert_threshold()[e]) /
                       2,
                   "pass " << pass << " threshold of expert " << e);
  }

  // Evaluation as trained (batch selection) selects per group too; by thresholds it needs none.
  MoeForwardOptions as_trained;
  as_trained.training = false;
  as_trained.batch_selection_in_eval = true;
  grouped.layer.forward(x.span(), T, y_grouped.span(), as_trained);
  for (int64_t h = 0; h < 2; ++h)
    alone[h]->layer.forward(rows(x, h), half, rows(y_alone, h), as_trained);
  for (int64_t i = 0; i < T * D; ++i)
    EXPECT_CLOSE(y_grouped[i], y_alone[i], "batch-selection evaluation y at " << i);
  EXPECT_THROW(grouped.layer.forward(x.span(), 7, y_grouped.span(), as_trained), Error);
  MoeForwardOptions by_thresholds;
  by_thresholds.training = false;
  EXPECT_NO_THROW(grouped.layer.forward(x.span(), 7, y_grouped.span(), by_thresholds));
}

TEST(CapacityGroups, EvaluationAndDecodingUseOneGroup) {
  // 7 tokens are not a multiple of 2 groups: an error in training, fine in evaluation.
  Layer l(grouped_config(2));
  Tensor x({7, 16}), y({7, 16});
  Rng rng(1);
  rng.fill_normal(x.span(), 0, 1);
  EXPECT_THROW(l.layer.forward(x.span(), 7, y.span()), Error);
  MoeForwardOptions eval;
  eval.training = false;
  EXPECT_NO_THROW(l.layer.forward(x.span(), 7, y.span(), eval));
}

TEST(CapacityGroups, ConfigRangeRoundTripAndExpertChoiceAccepted) {
  MoeConfig c = grouped_config(4);
  EXPECT_EQ(moe_config_from_json(moe_config_to_json(c)).capacity_groups, 4);
  nlohmann::json j = moe_config_to_json(c);
  j["capacity_groups"] = 0;
  try {
    moe_config_from_json(j);
    FAIL() << "capacity_groups 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity_groups"), std::string::npos) << e.what();
  }
  c.router_type = RouterType::ExpertChoice;
  c.aux_loss_type = AuxLossType::None;
  EXPECT_NO_THROW(c.validate());
}

}  // namespace
}  // namespace moe
