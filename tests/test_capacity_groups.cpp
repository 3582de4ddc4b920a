// capacity_groups: a training batch split into G groups, each with its own capacity and its
// own batch-level balancing loss, is the layout an expert-parallel run over G ranks computes.
// Checked here against the plain layer run on each group alone: outputs, drops, the aux loss
// (the mean over groups) and every gradient, within 1e-5 (1 + |value|) (the experts' GEMMs and
// the gradient sums see the groups' rows together or apart: another fp32 summation order).
#include <gtest/gtest.h>

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

TEST(CapacityGroups, ConfigRangeRoundTripAndExpertChoice) {
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
  EXPECT_THROW(c.validate(), Error);
}

}  // namespace
}  // namespace moe
