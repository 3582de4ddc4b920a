#include "moe/config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

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
const char* to_string(RoutingLevel l) {
  return enum_name(l, kLevelNames);
}

void MoeConfig::validate() const {
  check(hidden_size > 0, "hidden_size", "must be positive");
  check(moe_intermediate_size > 0, "moe_intermediate_size", "must be positive");
  check(num_experts > 0, "num_experts", "must be positive, got " + std::to_string(num_experts));
  check(top_k > 0, "top_k", "must be positive");
  check(top_k <= num_experts, "top_k",
        std::to_string(top_k) + " exceeds num_experts " + std::to_string(num_experts));
  check(std::isfinite(routed_scaling_factor) && routed_scaling_factor > 0, "routed_scaling_factor",
        "must be a positive number");
  check(jitter_eps >= 0 && jitter_eps < 1, "jitter_eps", "must be in [0, 1)");
  check(n_group > 0 && num_experts % n_group == 0, "n_group",
        "must be positive and divide num_experts");
  check(n_group <= 256, "n_group", "at most 256 groups");
  check(topk_group > 0 && topk_group <= n_group, "topk_group", "must be in [1, n_group]");
  check(top_k <= topk_group * (num_experts / n_group), "topk_group",
        "the kept groups hold fewer than top_k experts");
  check(std::isfinite(capacity_factor) && capacity_factor >= 0, "capacity_factor",
        "must be >= 0 (0 = dropless)");
  if (eval_capacity_factor)
    check(std::isfinite(*eval_capacity_factor) && *eval_capacity_factor >= 0,
          "eval_capacity_factor", "must be >= 0 (0 = dropless)");
  check(min_capacity >= 0, "min_capacity", "must be >= 0");
  check(aux_loss_coeff >= 0, "aux_loss_coeff", "must be >= 0");
  check(z_loss_coeff >= 0, "z_loss_coeff", "must be >= 0");
  check(bias_update_speed >= 0, "bias_update_speed", "must be >= 0");
  check(n_shared_experts >= 0, "n_shared_experts", "must be >= 0");
  check(n_shared_experts == 0 || shared_expert_intermediate_size > 0,
        "shared_expert_intermediate_size", "must be positive when n_shared_experts > 0");
  check(!shared_expert_gate || n_shared_experts > 0, "shared_expert_gate",
        "needs n_shared_experts > 0");
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
  check(route_prefix >= 1 && route_prefix <= (int64_t{1} << 24), "route_prefix",
        "must be in [1, 16777216]");
}

int64_t MoeConfig::capacity(int64_t tokens, bool training) const {
  // Token choice evaluates dropless unless eval_capacity_factor asks otherwise: a capacity
  // would make a token's route depend on later tokens and the rest of the batch. Expert choice
  // evaluates by its thresholds; its capacity here serves the batch selection only.
  if (!training && !eval_capacity_factor && router_type != RouterType::ExpertChoice) return -1;
  const float cf = training || !eval_capacity_factor ? capacity_factor : *eval_capacity_factor;
  if (cf <= 0) return -1;
  const double exact = static_cast<double>(cf) * tokens * top_k / num_experts;
  // The small epsilon keeps products like 1.25 * 16 * 2 / 8 from rounding up to 11.
  return std::max(min_capacity, static_cast<int64_t>(std::ceil(exact - 1e-9)));
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
    else if (key == "bias_update_speed")
      c.bias_update_speed = json_float(v, kWhat, k);
    else if (key == "capacity_factor")
      c.capacity_factor = v.is_null() ? 0.0f : json_float(v, kWhat, k);
    else if (key == "eval_capacity_factor") {
      if (v.is_null())
        c.eval_capacity_factor.reset();
      else
        c.eval_capacity_factor = json_float(v, kWhat, k);
    } else if (key == "min_capacity")
      c.min_capacity = json_int(v, kWhat, k);
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
      {"bias_update_speed", c.bias_update_speed},
      {"capacity_factor", c.capacity_factor},
      {"min_capacity", c.min_capacity},
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
