#include "moe/config.h"

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace {

template <typename Enum, size_t N>
Enum parse_enum(const nlohmann::json& v, const char* key,
                const std::pair<const char*, Enum> (&names)[N]) {
  require(v.is_string(), std::string("config field '") + key + "' must be a string");
  const std::string s = v.get<std::string>();
  std::string allowed;
  for (const auto& [name, value] : names) {
    if (s == name) return value;
    allowed += (allowed.empty() ? "" : ", ") + std::string(name);
  }
  throw Error(std::string("config field '") + key + "': unknown value '" + s +
              "' (expected one of " + allowed + ")");
}

constexpr std::pair<const char*, RouterType> kRouterNames[] = {
    {"softmax_topk", RouterType::SoftmaxTopK},   {"topk_softmax", RouterType::TopKSoftmax},
    {"noisy_topk", RouterType::NoisyTopK},       {"sigmoid_bias", RouterType::SigmoidBias},
    {"expert_choice", RouterType::ExpertChoice},
};
constexpr std::pair<const char*, DropPolicy> kDropNames[] = {{"probs", DropPolicy::Probs},
                                                             {"position", DropPolicy::Position}};
constexpr std::pair<const char*, AuxLossType> kAuxNames[] = {
    {"none", AuxLossType::None}, {"switch", AuxLossType::Switch}, {"seq", AuxLossType::Sequence}};
constexpr std::pair<const char*, GroupScore> kGroupScoreNames[] = {
    {"top2_sum", GroupScore::Top2Sum}, {"max", GroupScore::Max}};
constexpr std::pair<const char*, RoutingLevel> kLevelNames[] = {
    {"token", RoutingLevel::Token}, {"sequence", RoutingLevel::Sequence}};

template <typename Enum, size_t N>
const char* enum_name(Enum e, const std::pair<const char*, Enum> (&names)[N]) {
  for (const auto& [name, value] : names)
    if (value == e) return name;
  return "?";
}

constexpr const char* kWhat = "config";  // how errors name the object: "<kWhat> field 'x'"

void check(bool ok, const char* field, const std::string& what) {
  if (!ok) throw Error(std::string(kWhat) + " field '" + field + "': " + what);
}

// Shortest text that reads back as v ("1e+18", "0.1", "inf").
std::string number_text(double v) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
  return std::string(buf, end);
}

// Every size has an upper bound too, so products of sizes below stay far inside int64.
constexpr int64_t kMaxWidth = int64_t{1} << 20;            // hidden and FFN widths
constexpr int64_t kMaxExperts = int64_t{1} << 16;          // routed experts
constexpr int64_t kMaxSharedExperts = 256;                 // always-on experts
constexpr int64_t kMaxGroups = 256;                        // the router's per-group arrays
constexpr int64_t kMaxMinCapacity = int64_t{1} << 30;      // assignments per expert
constexpr int64_t kMaxLayerParameters = int64_t{1} << 40;  // one MoE layer's weights
constexpr double kMaxCapacityFactor = 1000.0;
constexpr double kMaxScalingFactor = 1000.0;
constexpr double kMaxLossCoeff = 100.0;

void check_range(int64_t v, const char* field, int64_t lo, int64_t hi, const char* note = "") {
  require_int_in_range(v, lo, hi, kWhat, field, note);
}
// [lo, hi], or (lo, hi] when lo_open; NaN and infinities fail every range.
void check_range(double v, const char* field, double lo, double hi, bool lo_open = false,
                 const char* note = "") {
  require_real_in_range(v, lo, hi, kWhat, field, lo_open ? Lower::Exclusive : Lower::Inclusive,
                        note);
}

}  // namespace

const char* to_string(RouterType t) {
  return enum_name(t, kRouterNames);
}
const char* to_string(DropPolicy p) {
  return enum_name(p, kDropNames);
}
const char* to_string(AuxLossType t) {
  return enum_name(t, kAuxNames);
}
const char* to_string(GroupScore s) {
  return enum_name(s, kGroupScoreNames);
}
const char* to_string(RoutingLevel l) {
  return enum_name(l, kLevelNames);
}

void MoeConfig::validate() const {
  check_range(hidden_size, "hidden_size", 1, kMaxWidth);
  check_range(moe_intermediate_size, "moe_intermediate_size", 1, kMaxWidth);
  check_range(num_experts, "num_experts", 1, kMaxExperts);
  check_range(top_k, "top_k", 1, num_experts, " (at most num_experts)");
  check_range(routed_scaling_factor, "routed_scaling_factor", 0.0, kMaxScalingFactor, true);
  check(std::isfinite(jitter_eps) && jitter_eps >= 0 && jitter_eps < 1, "jitter_eps",
        "must be a finite number in [0, 1), got " + number_text(jitter_eps));
  check_range(n_group, "n_group", 1, kMaxGroups);
  check(num_experts % n_group == 0, "n_group",
        std::to_string(n_group) + " does not divide num_experts " + std::to_string(num_experts));
  check_range(topk_group, "topk_group", 1, n_group, " (at most n_group)");
  check(top_k <= topk_group * (num_experts / n_group), "topk_group",
        "the kept groups hold fewer than top_k experts");
  check_range(bias_update_speed, "bias_update_speed", 0.0, 1.0);
  check_range(capacity_factor, "capacity_factor", 0.0, kMaxCapacityFactor, false,
              " (0 = dropless)");
  if (eval_capacity_factor)
    check_range(*eval_capacity_factor, "eval_capacity_factor", 0.0, kMaxCapacityFactor, false,
                " (0 = dropless)");
  check_range(min_capacity, "min_capacity", 0, kMaxMinCapacity);
  check_range(capacity_groups, "capacity_groups", 1, int64_t{1} << 16);
  check_range(aux_loss_coeff, "aux_loss_coeff", 0.0, kMaxLossCoeff);
  check_range(z_loss_coeff, "z_loss_coeff", 0.0, kMaxLossCoeff);
  check_range(n_shared_experts, "n_shared_experts", 0, kMaxSharedExperts);
  check_range(shared_expert_intermediate_size, "shared_expert_intermediate_size", 0, kMaxWidth);
  check(n_shared_experts == 0 || shared_expert_intermediate_size > 0,
        "shared_expert_intermediate_size", "must be positive when n_shared_experts > 0");
  check(!shared_expert_gate || n_shared_experts > 0, "shared_expert_gate",
        "needs n_shared_experts > 0");
  // With the bounds above none of these products can overflow int64.
  const int64_t layer_parameters =
      num_experts * (3 * moe_intermediate_size + 2) * hidden_size +
      n_shared_experts * 3 * shared_expert_intermediate_size * hidden_size + hidden_size;
  check(layer_parameters <= kMaxLayerParameters, "num_experts",
        "num_experts, moe_intermediate_size, hidden_size and the shared experts give " +
            std::to_string(layer_parameters) + " parameters per MoE layer, more than 2^40");
  if (router_type == RouterType::ExpertChoice) {
    check(capacity_factor > 0, "capacity_factor",
          "expert_choice needs a positive capacity factor (C = cf * T * k / E)");
    check(!eval_capacity_factor || *eval_capacity_factor > 0, "eval_capacity_factor",
          "expert_choice needs a positive capacity factor");
    check(aux_loss_type == AuxLossType::None, "aux_loss_type",
          "expert_choice is balanced by construction; set it to \"none\"");
    check(n_group == 1, "n_group", "group-limited routing applies to token choice only");
    check(routing_level == RoutingLevel::Token, "routing_level",
          "expert_choice selects tokens per expert; sequence routing needs a token-choice router");
  }
  check_range(route_prefix, "route_prefix", 1, int64_t{1} << 24);
}

int64_t MoeConfig::capacity(int64_t tokens, bool training) const {
  // Token choice evaluates dropless unless eval_capacity_factor asks otherwise: a capacity
  // would make a token's route depend on later tokens and the rest of the batch. Expert choice
  // evaluates by its thresholds; its capacity here serves the batch selection only.
  if (!training && !eval_capacity_factor && router_type != RouterType::ExpertChoice) return -1;
  const double cf = training || !eval_capacity_factor ? capacity_factor : *eval_capacity_factor;
  if (cf <= 0) return -1;
  const double exact = cf * static_cast<double>(tokens) * static_cast<double>(top_k) /
                       static_cast<double>(num_experts);
  // A decimal factor such as 1.1 is not exact in binary, so a product that is an integer in
  // decimal (1.1 * 80 * 2 / 16 = 11) can land a few ulps above it and ceil to 12. The
  // tolerance, relative and far above those ulps, keeps it 11. A positive factor gives at
  // least 1, and no expert can receive more than T assignments.
  const double tolerance = 1e-9 * std::max(1.0, exact);
  const double rounded = std::max(1.0, std::ceil(exact - tolerance));
  return std::max(min_capacity,
                  static_cast<int64_t>(std::min(rounded, static_cast<double>(tokens))));
}

MoeConfig moe_config_from_json(const nlohmann::json& j) {
  require(j.is_object(), "MoE config must be a JSON object");
  MoeConfig c;
  for (auto& [key, v] : j.items()) {
    const char* k = key.c_str();
    if (key == "hidden_size")
      c.hidden_size = json_int(v, kWhat, k);
    else if (key == "moe_intermediate_size")
      c.moe_intermediate_size = json_int(v, kWhat, k);
    else if (key == "num_experts")
      c.num_experts = json_int(v, kWhat, k);
    else if (key == "top_k")
      c.top_k = json_int(v, kWhat, k);
    else if (key == "router_type")
      c.router_type = parse_enum(v, k, kRouterNames);
    else if (key == "routing_level")
      c.routing_level = parse_enum(v, k, kLevelNames);
    else if (key == "route_prefix")
      c.route_prefix = json_int(v, kWhat, k);
    else if (key == "norm_topk_prob")
      c.norm_topk_prob = json_bool(v, kWhat, k);
    else if (key == "routed_scaling_factor")
      c.routed_scaling_factor = json_float(v, kWhat, k);
    else if (key == "jitter_eps")
      c.jitter_eps = json_float(v, kWhat, k);
    else if (key == "n_group")
      c.n_group = json_int(v, kWhat, k);
    else if (key == "topk_group")
      c.topk_group = json_int(v, kWhat, k);
    else if (key == "group_score")
      c.group_score = parse_enum(v, k, kGroupScoreNames);
    else if (key == "bias_update_speed")
      c.bias_update_speed = json_float(v, kWhat, k);
    else if (key == "capacity_factor")
      c.capacity_factor = v.is_null() ? 0.0 : json_number(v, kWhat, k);
    else if (key == "eval_capacity_factor") {
      if (v.is_null())
        c.eval_capacity_factor.reset();
      else
        c.eval_capacity_factor = json_number(v, kWhat, k);
    } else if (key == "min_capacity")
      c.min_capacity = json_int(v, kWhat, k);
    else if (key == "capacity_groups")
      c.capacity_groups = json_int(v, kWhat, k);
    else if (key == "drop_policy")
      c.drop_policy = parse_enum(v, k, kDropNames);
    else if (key == "aux_loss_type")
      c.aux_loss_type = parse_enum(v, k, kAuxNames);
    else if (key == "aux_loss_coeff")
      c.aux_loss_coeff = json_float(v, kWhat, k);
    else if (key == "z_loss_coeff")
      c.z_loss_coeff = json_float(v, kWhat, k);
    else if (key == "n_shared_experts")
      c.n_shared_experts = json_int(v, kWhat, k);
    else if (key == "shared_expert_intermediate_size")
      c.shared_expert_intermediate_size = json_int(v, kWhat, k);
    else if (key == "shared_expert_gate")
      c.shared_expert_gate = json_bool(v, kWhat, k);
    else
      throw Error("unknown MoE config field '" + key + "'");
  }
  c.validate();
  return c;
}

nlohmann::json moe_config_to_json(const MoeConfig& c) {
  nlohmann::json j = {
      {"hidden_size", c.hidden_size},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"num_experts", c.num_experts},
      {"top_k", c.top_k},
      {"router_type", to_string(c.router_type)},
      {"routing_level", to_string(c.routing_level)},
      {"route_prefix", c.route_prefix},
      {"norm_topk_prob", c.norm_topk_prob},
      {"routed_scaling_factor", c.routed_scaling_factor},
      {"jitter_eps", c.jitter_eps},
      {"n_group", c.n_group},
      {"topk_group", c.topk_group},
      {"group_score", to_string(c.group_score)},
      {"bias_update_speed", c.bias_update_speed},
      {"capacity_factor", c.capacity_factor},
      {"min_capacity", c.min_capacity},
      {"capacity_groups", c.capacity_groups},
      {"drop_policy", to_string(c.drop_policy)},
      {"aux_loss_type", to_string(c.aux_loss_type)},
      {"aux_loss_coeff", c.aux_loss_coeff},
      {"z_loss_coeff", c.z_loss_coeff},
      {"n_shared_experts", c.n_shared_experts},
      {"shared_expert_intermediate_size", c.shared_expert_intermediate_size},
      {"shared_expert_gate", c.shared_expert_gate},
  };
  j["eval_capacity_factor"] =
      c.eval_capacity_factor ? nlohmann::json(*c.eval_capacity_factor) : nlohmann::json(nullptr);
  return j;
}

}  // namespace moe
