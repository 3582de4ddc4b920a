#include "train/expert_monitor.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "tensor/error.h"

namespace moe {

void ExpertMonitor::restore(const nlohmann::json& saved, const std::string& dir, int64_t step,
                            int64_t monitor_every) {
  const size_t layers = loads_.size();
  loads_ = saved.at("loads").get<std::vector<std::vector<int64_t>>>();
  dropped_ = saved.at("dropped").get<std::vector<int64_t>>();
  assigned_ = saved.at("assigned").get<std::vector<int64_t>>();
  // Token and unrouted counts came later: an older state starts them at zero.
  tokens_ = saved.value("tokens", std::vector<int64_t>(layers, 0));
  unrouted_ = saved.value("unrouted", std::vector<int64_t>(layers, 0));
  if (loads_.size() != layers || dropped_.size() != layers || assigned_.size() != layers ||
      tokens_.size() != layers || unrouted_.size() != layers)
    throw Error(dir + "/trainer_state.json: 'monitor' does not match the model's layers");
  first_step_ = saved.value("first_step", step / monitor_every * monitor_every + 1);
}

nlohmann::json ExpertMonitor::to_json() const {
  return {{"loads", loads_},   {"dropped", dropped_},   {"assigned", assigned_},
          {"tokens", tokens_}, {"unrouted", unrouted_}, {"first_step", first_step_}};
}

void ExpertMonitor::add(const Transformer& model, Collectives* comm) {
  counts_.clear();  // per MoE layer: E loads, dropped, assignments, tokens, unrouted
  for (int64_t l = 0; l < model.num_layers(); ++l)
    if (const MoeLayer* m = model.moe_layer(l)) {
      const RoutingStats& rs = m->stats();
      counts_.insert(counts_.end(), rs.tokens_per_expert.begin(), rs.tokens_per_expert.end());
      counts_.insert(counts_.end(), {rs.dropped, rs.assignments, rs.tokens, rs.unrouted_tokens});
    }
  if (comm) comm->sum(counts_);
  auto next = counts_.begin();
  for (int64_t l = 0; l < model.num_layers(); ++l)
    if (const MoeLayer* m = model.moe_layer(l)) {
      const size_t E = m->stats().tokens_per_expert.size();
      if (loads_[l].empty()) loads_[l].assign(E, 0);
      for (size_t e = 0; e < E; ++e) loads_[l][e] += *next++;
      dropped_[l] += *next++;
      assigned_[l] += *next++;
      tokens_[l] += *next++;
      unrouted_[l] += *next++;
    }
}

nlohmann::json ExpertMonitor::report(const Transformer& model, int64_t step) {
  std::fprintf(stderr, "  expert load over steps %lld-%lld:\n", static_cast<long long>(first_step_),
               static_cast<long long>(step));
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t l = 0; l < model.num_layers(); ++l) {
    if (!model.moe_layer(l)) continue;
    const LoadMetrics lm = load_metrics(loads_[l]);
    const double drop_rate = assigned_[l] ? double(dropped_[l]) / double(assigned_[l]) : 0.0;
    const double tokens = std::max<double>(1.0, double(tokens_[l]));
    const double per_token = double(assigned_[l] - dropped_[l]) / tokens;
    const double unrouted = double(unrouted_[l]) / tokens;
    layers.push_back({{"layer", l},
                      {"counts", loads_[l]},
                      {"gini", lm.gini},
                      {"entropy", lm.normalized_entropy},
                      {"cv", lm.cv},
                      {"max_over_mean", lm.max_over_mean},
                      {"drop_rate", drop_rate},
                      {"experts_per_token", per_token},
                      {"unrouted_share", unrouted}});
    print_layer(model, l, step, lm, drop_rate, per_token, unrouted);
    std::fill(loads_[l].begin(), loads_[l].end(), 0);
    dropped_[l] = assigned_[l] = tokens_[l] = unrouted_[l] = 0;
  }
  first_step_ = step + 1;
  return layers;
}

void ExpertMonitor::print_layer(const Transformer& model, int64_t l, int64_t step,
                                const LoadMetrics& lm, double drop_rate, double per_token,
                                double unrouted) const {
  std::fprintf(stderr, "  layer %2lld experts |%s|  gini %.3f  entropy %.3f  drop %.1f%%",
               static_cast<long long>(l), load_bars(loads_[l]).c_str(), lm.gini,
               lm.normalized_entropy, 100.0 * drop_rate);
  // Expert choice gives each token a variable number of experts, possibly none.
  if (model.moe_layer(l)->config().router_type == RouterType::ExpertChoice)
    std::fprintf(stderr, "  experts/token %.2f  unrouted %.1f%%", per_token, 100.0 * unrouted);
  std::fprintf(stderr, "\n");
  for (int64_t e : lm.overloaded)
    std::fprintf(stderr, "  warning: layer %lld expert %lld has over 3x the mean load\n",
                 static_cast<long long>(l), static_cast<long long>(e));
  for (int64_t e : lm.starved)
    std::fprintf(stderr,
                 "  warning: layer %lld expert %lld gets under a tenth of the mean load "
                 "(collapse)\n",
                 static_cast<long long>(l), static_cast<long long>(e));
  if (drop_rate > kDropWarningRate)
    std::fprintf(stderr,
                 "  warning: layer %lld dropped %.1f%% of its token assignments over steps "
                 "%lld-%lld (over %.0f%%): raise capacity_factor, or set it to 0 (dropless)\n",
                 static_cast<long long>(l), 100.0 * drop_rate, static_cast<long long>(first_step_),
                 static_cast<long long>(step), 100.0 * kDropWarningRate);
}

}  // namespace moe
