// MoE configurations: bad ones fail with an error that names the field (and its range);
// the capacity formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/param_count.h"
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
  c.capacity_factor = 1.1;
  c.eval_capacity_factor = 1.3;
  c.n_shared_experts = 2;
  c.shared_expert_intermediate_size = 64;
  const MoeConfig back = moe_config_from_json(moe_config_to_json(c));
  EXPECT_EQ(moe_config_to_json(back), moe_config_to_json(c));
}

TEST(MoeConfig, CapacityFormula) {
  MoeConfig c;
  c.num_experts = 8;
  c.top_k = 2;
  c.capacity_factor = 1.25;
  EXPECT_EQ(c.capacity(16, true), 5);  // ceil(1.25 * 16 * 2 / 8)
  c.min_capacity = 7;
  EXPECT_EQ(c.capacity(16, true), 7);
  c.eval_capacity_factor = 0.0;
  EXPECT_EQ(c.capacity(16, false), -1);  // dropless at evaluation
  c.capacity_factor = 0.0;
  EXPECT_EQ(c.capacity(16, true), -1);
}

// Issue 14: with the factor held as a float, 1.1f = 1.10000002 pushed these one too high.
TEST(MoeConfig, CapacityIsExactForDecimalFactors) {
  struct Shape {
    double cf;
    int64_t tokens, top_k, experts, expected;
  };
  const Shape shapes[] = {
      {1.1, 80, 2, 16, 11}, {1.2, 50, 2, 8, 15}, {1.1, 20, 2, 4, 11},    {1.2, 10, 2, 4, 6},
      {1.2, 20, 1, 8, 3},   {1.25, 16, 2, 8, 5}, {1.3, 30, 2, 4, 20},    {1.3, 100, 2, 8, 33},
      {1.5, 14, 2, 4, 11},  {1.1, 7, 2, 4, 4},   {1.2, 1000, 2, 64, 38}, {0.1, 3, 1, 4, 1},
  };
  for (const Shape& s : shapes) {
    MoeConfig c;
    c.num_experts = s.experts;
    c.top_k = s.top_k;
    c.capacity_factor = s.cf;
    EXPECT_EQ(c.capacity(s.tokens, true), s.expected)
        << "cf " << s.cf << " T " << s.tokens << " k " << s.top_k << " E " << s.experts;
    // The same through the evaluation factor, and through JSON.
    c.capacity_factor = 2.0;
    c.eval_capacity_factor = s.cf;
    EXPECT_EQ(c.capacity(s.tokens, false), s.expected) << "eval cf " << s.cf;
    const MoeConfig parsed = moe_config_from_json(moe_config_to_json(c));
    EXPECT_EQ(parsed.capacity(s.tokens, false), s.expected) << "eval cf " << s.cf << " via JSON";
  }
}

// Capacity is ceil(cf T k / E) on the factor as written in decimal (docs/FORMULAS.md), checked
// here against integer arithmetic: cf = m / 10^d gives ceil(m T k / (10^d E)), capped at T. The
// factors are every one of one or two decimals up to 3, at T up to 128: among these, the
// product evaluated in double lands above an integer that the decimal product reaches (or a
// few ulps off otherwise) in dozens of cases, counted so that the test keeps covering them.
TEST(MoeConfig, CapacityIsTheDecimalCeilingWhereTheDoubleProductIsInexact) {
  int64_t inexact_in_double = 0;
  for (const int64_t scale : {10, 100})
    for (int64_t m = 1; m <= 3 * scale; ++m) {
      MoeConfig c;
      c.capacity_factor = double(m) / double(scale);  // the double nearest the decimal m / 10^d
      c.eval_capacity_factor = c.capacity_factor;
      for (const int64_t experts : {2, 4, 8, 16, 64})
        for (const int64_t k : {1, 2, 3}) {
          c.num_experts = experts;
          c.top_k = k;
          for (int64_t tokens = 1; tokens <= 128; ++tokens) {
            const int64_t numerator = m * tokens * k, denominator = scale * experts;
            const int64_t expected = std::min((numerator + denominator - 1) / denominator, tokens);
            const double in_double =
                std::ceil(c.capacity_factor * double(tokens) * double(k) / double(experts));
            inexact_in_double += std::min(static_cast<int64_t>(in_double), tokens) != expected;
            ASSERT_EQ(c.capacity(tokens, true), expected)
                << "cf " << m << "/" << scale << " T " << tokens << " k " << k << " E " << experts;
            ASSERT_EQ(c.capacity(tokens, false), expected) << "eval cf " << m << "/" << scale;
          }
        }
    }
  EXPECT_GE(inexact_in_double, 20);
}

TEST(MoeConfig, CapacityNeverExceedsTheTokens) {
  MoeConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  c.capacity_factor = 1000.0;
  EXPECT_EQ(c.capacity(10, true), 10);  // an expert receives at most one assignment per token
  c.min_capacity = 12;
  EXPECT_EQ(c.capacity(10, true), 12);  // min_capacity still wins
}

void expect_range_error(const nlohmann::json& j, const std::string& field,
                        const std::string& range) {
  try {
    moe_config_from_json(j);
    FAIL() << "accepted " << j.dump();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'" + field + "'"), std::string::npos) << what;
    EXPECT_NE(what.find(range), std::string::npos) << what;
  }
}

TEST(MoeConfig, EveryNumericFieldHasAnUpperBoundToo) {
  expect_range_error({{"capacity_factor", 1e18}}, "capacity_factor", "[0, 1000]");
  expect_range_error({{"eval_capacity_factor", 1e18}}, "eval_capacity_factor", "[0, 1000]");
  expect_range_error({{"hidden_size", 1 << 21}}, "hidden_size", "[1, 1048576]");
  expect_range_error({{"moe_intermediate_size", 1 << 21}}, "moe_intermediate_size", "[1, 1048576]");
  expect_range_error({{"num_experts", 1 << 17}}, "num_experts", "[1, 65536]");
  expect_range_error({{"top_k", 9}}, "top_k", "[1, 8]");
  expect_range_error({{"routed_scaling_factor", 1e4}}, "routed_scaling_factor", "(0, 1000]");
  expect_range_error({{"routed_scaling_factor", 0.0}}, "routed_scaling_factor", "(0, 1000]");
  expect_range_error({{"jitter_eps", 1.0}}, "jitter_eps", "[0, 1)");
  expect_range_error({{"n_group", 512}}, "n_group", "[1, 256]");
  expect_range_error({{"topk_group", 2}}, "topk_group", "[1, 1]");
  expect_range_error({{"bias_update_speed", 2.0}}, "bias_update_speed", "[0, 1]");
  expect_range_error({{"min_capacity", int64_t{1} << 31}}, "min_capacity", "[0, 1073741824]");
  expect_range_error({{"aux_loss_coeff", 1e3}}, "aux_loss_coeff", "[0, 100]");
  expect_range_error({{"z_loss_coeff", -1.0}}, "z_loss_coeff", "[0, 100]");
  expect_range_error({{"n_shared_experts", 1000}}, "n_shared_experts", "[0, 256]");
  expect_range_error({{"n_shared_experts", 1}, {"shared_expert_intermediate_size", 1 << 21}},
                     "shared_expert_intermediate_size", "[0, 1048576]");
  // Each size in range, their product not: one layer's weights are bounded too.
  expect_range_error({{"hidden_size", 1 << 20}, {"moe_intermediate_size", 1 << 20}}, "num_experts",
                     "2^40");
}

TEST(MoeConfig, NonFiniteNumbersAreRejected) {
  // JSON has no infinity; a literal beyond float's range, which would read as one, is refused.
  expect_range_error({{"aux_loss_coeff", 1e39}}, "aux_loss_coeff", "within float range");
  expect_range_error({{"routed_scaling_factor", -1e39}}, "routed_scaling_factor",
                     "within float range");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float MoeConfig::*field :
       {&MoeConfig::routed_scaling_factor, &MoeConfig::jitter_eps, &MoeConfig::bias_update_speed,
        &MoeConfig::aux_loss_coeff, &MoeConfig::z_loss_coeff}) {
    MoeConfig c;
    c.*field = nan;
    EXPECT_THROW(c.validate(), Error);
    c.*field = std::numeric_limits<float>::infinity();
    EXPECT_THROW(c.validate(), Error);
  }
  MoeConfig c;
  c.capacity_factor = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(c.validate(), Error);
  c.capacity_factor = 1.0;
  c.eval_capacity_factor = std::numeric_limits<double>::infinity();
  EXPECT_THROW(c.validate(), Error);
}

TEST(MoeConfig, GroupScoreIsAFieldWithTwoValues) {
  const MoeConfig v2 = moe_config_from_json(
      {{"num_experts", 8}, {"n_group", 4}, {"topk_group", 2}, {"group_score", "max"}});
  EXPECT_EQ(v2.group_score, GroupScore::Max);
  EXPECT_EQ(moe_config_to_json(v2).at("group_score"), "max");
  EXPECT_EQ(MoeConfig{}.group_score, GroupScore::Top2Sum);  // DeepSeek-V3's, as before
  try {
    moe_config_from_json({{"group_score", "sum"}});
    FAIL() << "accepted group_score 'sum'";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("group_score"), std::string::npos) << what;
    EXPECT_NE(what.find("top2_sum, max"), std::string::npos) << what;
  }
}

TEST(MoeConfig, DeepSeekPresetsScoreGroupsTheirOwnWay) {
  EXPECT_EQ(find_preset("deepseek-v2")->group_score, GroupScore::Max);
  EXPECT_EQ(find_preset("deepseek-v3")->group_score, GroupScore::Top2Sum);
}

}  // namespace
}  // namespace moe
