// Bad MoE configurations fail with an error that names the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "moe/config.h"
#include "tensor/error.h"

namespace moe {
namespace {

void expect_error_naming(const nlohmann::json& j, const std::string& field) {
  try {
    moe_config_from_json(j);
    FAIL() << "accepted " << j.dump();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

TEST(MoeConfig, RejectsInconsistentFields) {
  expect_error_naming({{"num_experts", 4}, {"top_k", 5}}, "top_k");
  expect_error_naming({{"num_experts", 0}}, "num_experts");
  expect_error_naming({{"capacity_factor", -1.0}}, "capacity_factor");
  expect_error_naming({{"eval_capacity_factor", -0.5}}, "eval_capacity_factor");
  expect_error_naming({{"num_experts", 8}, {"n_group", 3}}, "n_group");
  expect_error_naming({{"num_experts", 8}, {"n_group", 4}, {"topk_group", 5}}, "topk_group");
  expect_error_naming({{"num_experts", 8}, {"top_k", 6}, {"n_group", 4}, {"topk_group", 2}},
                      "topk_group");
  expect_error_naming({{"router_type", "expert_choice"}}, "capacity_factor");
  expect_error_naming({{"router_type", "expert_choice"}, {"capacity_factor", 1.0}},
                      "aux_loss_type");
  expect_error_naming({{"n_shared_experts", 1}}, "shared_expert_intermediate_size");
  expect_error_naming({{"jitter_eps", 1.5}}, "jitter_eps");
}

TEST(MoeConfig, RejectsUnknownKeysAndWrongTypes) {
  expect_error_naming({{"num_expert", 8}}, "num_expert");
  expect_error_naming({{"top_k", "two"}}, "top_k");
  expect_error_naming({{"router_type", "softmax"}}, "router_type");
  expect_error_naming({{"drop_policy", "random"}}, "drop_policy");
}

TEST(MoeConfig, RoundTripsThroughJson) {
  MoeConfig c;
  c.router_type = RouterType::SigmoidBias;
  c.capacity_factor = 1.25f;
  c.eval_capacity_factor = 2.0f;
  c.n_shared_experts = 2;
  c.shared_expert_intermediate_size = 64;
  const MoeConfig back = moe_config_from_json(moe_config_to_json(c));
  EXPECT_EQ(moe_config_to_json(back), moe_config_to_json(c));
}

TEST(MoeConfig, CapacityFormula) {
  MoeConfig c;
  c.num_experts = 8;
  c.top_k = 2;
  c.capacity_factor = 1.25f;
  EXPECT_EQ(c.capacity(16, true), 5);  // ceil(1.25 * 16 * 2 / 8)
  c.min_capacity = 7;
  EXPECT_EQ(c.capacity(16, true), 7);
  c.eval_capacity_factor = 0.0f;
  EXPECT_EQ(c.capacity(16, false), -1);  // dropless at evaluation
  c.capacity_factor = 0.0f;
  EXPECT_EQ(c.capacity(16, true), -1);
}

}  // namespace
}  // namespace moe
