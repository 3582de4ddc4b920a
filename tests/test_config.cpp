// Bad MoE configurations fail with an error that names the field.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "moe/config.h"
#include "tensor/error.h"
#include "tensor/json_field.h"

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

// The typed readers and range checks both config parsers build on.
TEST(JsonField, NumbersAreFiniteAndFitTheirType) {
  auto error_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const nlohmann::json big_unsigned = UINT64_MAX;
  EXPECT_EQ(error_of([&] { json_int(big_unsigned, "cfg", "n"); }),
            "cfg field 'n' must be an integer that fits in 64 bits");
  EXPECT_EQ(json_int(nlohmann::json(INT64_MAX), "cfg", "n"), INT64_MAX);
  // 1e39 is a finite double but no float: the cast gave inf, which passed as a coefficient.
  EXPECT_EQ(error_of([] { json_float(nlohmann::json(1e39), "cfg", "x"); }),
            "cfg field 'x' must be a number within float range (|x| <= 3.4e38)");
  EXPECT_EQ(json_float(nlohmann::json(0.5), "cfg", "x"), 0.5f);
  // JSON text cannot spell NaN or inf, but a json value built in code can.
  EXPECT_EQ(error_of([] {
              json_number(nlohmann::json(std::numeric_limits<double>::infinity()), "cfg", "x");
            }),
            "cfg field 'x' must be a finite number");
  EXPECT_EQ(error_of([] { json_number(nlohmann::json(std::nan("")), "cfg", "x"); }),
            "cfg field 'x' must be a finite number");

  EXPECT_EQ(error_of([] { require_int_in_range(9, 1, 8, "cfg", "k"); }),
            "cfg field 'k' must be in [1, 8], got 9");
  EXPECT_EQ(error_of([] { require_int_in_range(8, 1, 8, "cfg", "k"); }), "(no error)");
  EXPECT_EQ(error_of([] { require_real_in_range(0.0, 0.0, 1.0, "cfg", "eps", Lower::Exclusive); }),
            "cfg field 'eps' must be in (0, 1], got 0");
  EXPECT_EQ(error_of([] { require_real_in_range(0.0, 0.0, 1.0, "cfg", "eps"); }), "(no error)");
  EXPECT_EQ(error_of([] { require_real_in_range(1e18, 0.0, 100.0, "cfg", "cf"); }),
            "cfg field 'cf' must be in [0, 100], got 1e+18");
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()})
    EXPECT_NE(error_of([&] {
                require_real_in_range(bad, -std::numeric_limits<double>::max(),
                                      std::numeric_limits<double>::max(), "cfg", "x");
              }),
              "(no error)")
        << bad;
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
