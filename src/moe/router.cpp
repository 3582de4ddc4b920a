#include "moe/router.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "moe/losses.h"
#include "tensor/error.h"
#include "tensor/gemm.h"

namespace moe {
namespace {

inline float sigmoid(float v) {
  return 1.0f / (1.0f + std::exp(-v));
}
inline float softplus(float v) {
  return v > 20.0f ? v : std::log1p(std::exp(v));
}

}  // namespace

Router::Router(const MoeConfig& config, ParamStore& store, const std::string& prefix)
    : config_(config),
      store_(store),
      bias_({config.num_experts}),
      threshold_({config.num_experts}) {
  config_.validate();
  weight_ = store.add(prefix + ".weight", {config.num_experts, config.hidden_size});
  if (config.router_type == RouterType::NoisyTopK)
    noise_weight_ = store.add(prefix + ".noise_weight", {config.num_experts, config.hidden_size});
  threshold_.fill(std::numeric_limits<float>::quiet_NaN());
}

bool Router::thresholds_estimated() const {
  return std::none_of(threshold_.data(), threshold_.data() + threshold_.numel(),
                      [](float v) { return std::isnan(v); });
}

void Router::forward(std::span<const float> x, int64_t tokens, int64_t seq_len, bool training,
                     int64_t capacity, int64_t groups, const RouterNoise& noise, Rng& rng,
                     RoutingPlan& plan, bool batch_selection_in_eval) {
  require(groups >= 1 && tokens % groups == 0, "router: groups must divide the tokens");
  tokens_ = tokens;
  seq_len_ = seq_len;
  jittered_ = training && config_.jitter_eps > 0;
  noisy_ = training && config_.router_type == RouterType::NoisyTopK;

  prepare_input(x, tokens, noise, rng);
  compute_logits(tokens, noise, rng);
  compute_scores(tokens);

  plan.tokens = tokens;
  plan.experts = config_.num_experts;
  if (config_.router_type == RouterType::ExpertChoice) {
    if (training || batch_selection_in_eval) {
      select_expert_choice(tokens, capacity, groups, plan);
    } else {
      select_by_threshold(tokens, plan);
    }
  } else {
    select_token_choice(tokens, plan);
  }
  compute_losses(tokens, seq_len, groups);
}

// x: [T, D] -> input_: [T, D], x or, when jittered, x * jitter (the given draws, else rng's).
void Router::prepare_input(std::span<const float> x, int64_t tokens, const RouterNoise& noise,
                           Rng& rng) {
  const int64_t D = config_.hidden_size;
  input_.resize({tokens, D});
  if (jittered_) {
    jitter_.resize({tokens, D});
    if (!noise.jitter.empty()) {
      if (static_cast<int64_t>(noise.jitter.size()) != tokens * D)
        throw Error("router jitter draws: expected [T, D] = " + std::to_string(tokens * D) +
                    " values, got " + std::to_string(noise.jitter.size()));
      std::copy(noise.jitter.begin(), noise.jitter.end(), jitter_.data());
    } else {
      rng.fill_uniform(jitter_.span(), 1.0f - config_.jitter_eps, 1.0f + config_.jitter_eps);
    }
    for (int64_t i = 0; i < tokens * D; ++i) input_[i] = x[i] * jitter_[i];
  } else {
    std::copy(x.begin(), x.begin() + tokens * D, input_.data());
  }
}

void Router::compute_logits(int64_t tokens, const RouterNoise& noise, Rng& rng) {
  const int64_t D = config_.hidden_size, E = config_.num_experts;
  // logits = input W_r^T: [T, E]
  logits_.resize({tokens, E});
  gemm(Trans::No, Trans::Yes, tokens, E, D, 1.0f, input_.data(), D, store_.value(weight_).data(), D,
       0.0f, logits_.data(), E);
  if (!noisy_) return;
  // H = l + n * softplus(input W_noise^T)
  noise_pre_.resize({tokens, E});
  noise_normal_.resize({tokens, E});
  gemm(Trans::No, Trans::Yes, tokens, E, D, 1.0f, input_.data(), D,
       store_.value(noise_weight_).data(), D, 0.0f, noise_pre_.data(), E);
  if (!noise.normal.empty()) {
    if (static_cast<int64_t>(noise.normal.size()) != tokens * E)
      throw Error("router noise draws: expected [T, E] = " + std::to_string(tokens * E) +
                  " values, got " + std::to_string(noise.normal.size()));
    std::copy(noise.normal.begin(), noise.normal.end(), noise_normal_.data());
  } else {
    rng.fill_normal(noise_normal_.span(), 0.0f, 1.0f);
  }
  for (int64_t i = 0; i < tokens * E; ++i) logits_[i] += noise_normal_[i] * softplus(noise_pre_[i]);
}

void Router::compute_scores(int64_t tokens) {
  const int64_t E = config_.num_experts;
  // Scores and the normalised probabilities the balancing loss sees.
  scores_.resize({tokens, E});
  probs_.resize({tokens, E});
  const bool sigmoid_scores = config_.router_type == RouterType::SigmoidBias;
#pragma omp parallel for schedule(static) if (tokens > 256)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = logits_.data() + t * E;
    float* s = scores_.data() + t * E;
    float* p = probs_.data() + t * E;
    router_scores(config_, l, s);
    if (sigmoid_scores) {
      float sum = 0.0f;
      for (int64_t i = 0; i < E; ++i) sum += s[i];
      sum += kScoreNormEps;
      for (int64_t i = 0; i < E; ++i) p[i] = s[i] / sum;
    } else {
      std::copy(s, s + E, p);
    }
  }
}

void Router::compute_losses(int64_t tokens, int64_t seq_len, int64_t groups) {
  const int64_t E = config_.num_experts;
  aux_loss_ = 0.0f;
  // The batch-level loss is per capacity group, as the capacity.
  balance_window_ = config_.aux_loss_type == AuxLossType::Sequence ? seq_len : tokens / groups;
  if (config_.aux_loss_type != AuxLossType::None && config_.aux_loss_coeff > 0) {
    aux_loss_ = balance_loss(probs_.span(), selected_, tokens, E, config_.top_k, balance_window_,
                             config_.aux_loss_coeff, {});
  }
  z_loss_ = config_.z_loss_coeff > 0
                ? moe::z_loss(logits_.span(), tokens, E, config_.z_loss_coeff, {})
                : 0.0f;
}

void Router::select_token_choice(int64_t tokens, RoutingPlan& plan) {
  const int64_t E = config_.num_experts, k = config_.top_k;
  const bool sigmoid_scores = config_.router_type == RouterType::SigmoidBias;
  const int threads = omp_get_max_threads();
  order_scratch_.resize(static_cast<size_t>(threads) * std::max(E, tokens));
  select_scratch_.resize(static_cast<size_t>(threads) * E);

  plan.token_choice = true;
  plan.top_k = k;
  plan.token.resize(tokens * k);
  plan.expert.resize(tokens * k);
  plan.gate.resize(tokens * k);
  selected_.resize(tokens * k);
  picked_sum_.resize(tokens);

#pragma omp parallel for schedule(static) if (tokens > 64)
  for (int64_t t = 0; t < tokens; ++t) {
    const int tid = omp_get_thread_num();
    float* sel = select_scratch_.data() + static_cast<size_t>(tid) * E;
    int32_t* order = order_scratch_.data() + static_cast<size_t>(tid) * std::max(E, tokens);
    int32_t* picks = selected_.data() + t * k;
    float* gates = plan.gate.data() + t * k;
    picked_sum_[t] =
        select_token_experts(config_, scores_.data() + t * E,
                             sigmoid_scores ? bias_.data() : nullptr, picks, gates, sel, order);
    for (int64_t j = 0; j < k; ++j) {
      plan.token[t * k + j] = static_cast<int32_t>(t);
      plan.expert[t * k + j] = picks[j];
    }
  }
}

void Router::select_expert_choice(int64_t tokens, int64_t capacity, int64_t groups,
                                  RoutingPlan& plan) {
  const int64_t E = config_.num_experts, G = groups, group_tokens = tokens / G;
  const int64_t C = std::min(capacity, group_tokens);
  require(C > 0, "expert choice: capacity must be positive");
  const int threads = omp_get_max_threads();
  order_scratch_.resize(static_cast<size_t>(threads) * std::max(E, tokens));
  select_scratch_.resize(static_cast<size_t>(threads) * tokens);

  plan.token_choice = false;
  plan.top_k = config_.top_k;
  plan.token.resize(E * G * C);
  plan.expert.resize(E * G * C);
  plan.gate.resize(E * G * C);
  selected_.clear();
  last_pick_sums_.assign(E + 1, 0.0);
  last_pick_sums_[E] = static_cast<double>(G);

#pragma omp parallel for schedule(static) if (E * tokens > 65536)
  for (int64_t e = 0; e < E; ++e) {
    const int tid = omp_get_thread_num();
    float* column = select_scratch_.data() + static_cast<size_t>(tid) * tokens;
    int32_t* order = order_scratch_.data() + static_cast<size_t>(tid) * std::max(E, tokens);
    for (int64_t g = 0; g < G; ++g) {
      // Expert e's top-C among the group's tokens: picks [C], token indices of the whole batch.
      const int64_t first = g * group_tokens;
      for (int64_t t = 0; t < group_tokens; ++t) column[t] = scores_[(first + t) * E + e];
      int32_t* picks = plan.token.data() + (e * G + g) * C;
      top_indices(column, group_tokens, C, order, picks);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t a = (e * G + g) * C + c;
        picks[c] += static_cast<int32_t>(first);
        plan.expert[a] = static_cast<int32_t>(e);
        plan.gate[a] = config_.routed_scaling_factor * scores_[picks[c] * E + e];
      }
      // Picks are highest score first, so the last one is the group's selection threshold.
      last_pick_sums_[e] += scores_[static_cast<int64_t>(picks[C - 1]) * E + e];
    }
  }
}

void Router::update_thresholds(std::span<const double> sums) {
  const int64_t E = config_.num_experts;
  require(static_cast<int64_t>(sums.size()) == E + 1 && sums[E] > 0,
          "expert choice thresholds: expected [E + 1] sums over at least one group");
  for (int64_t e = 0; e < E; ++e) {
    const float last = static_cast<float>(sums[e] / sums[E]);
    threshold_[e] = std::isnan(threshold_[e])
                        ? last
                        : kThresholdMomentum * threshold_[e] + (1.0f - kThresholdMomentum) * last;
  }
}

void Router::select_by_threshold(int64_t tokens, RoutingPlan& plan) {
  const int64_t E = config_.num_experts;
  if (!thresholds_estimated())
    throw Error(
        "expert choice: no selection thresholds (they are learned in training; an evaluation "
        "needs a trained model)");
  plan.token_choice = false;
  plan.top_k = config_.top_k;
  // Each token's experts by the rule the inference engine uses, then listed expert by expert
  // (tokens ascending within an expert), as expert choice's plans are.
  std::vector<std::vector<int32_t>> tokens_of(static_cast<size_t>(E));
  std::vector<std::vector<float>> gates_of(static_cast<size_t>(E));
  std::vector<int32_t> experts;
  std::vector<float> gates;
  for (int64_t t = 0; t < tokens; ++t) {
    experts_over_threshold(config_, scores_.data() + t * E, threshold_.data(), experts, gates);
    for (size_t i = 0; i < experts.size(); ++i) {
      tokens_of[static_cast<size_t>(experts[i])].push_back(static_cast<int32_t>(t));
      gates_of[static_cast<size_t>(experts[i])].push_back(gates[i]);
    }
  }
  plan.token.clear();
  plan.expert.clear();
  plan.gate.clear();
  selected_.clear();
  for (int64_t e = 0; e < E; ++e) {
    const auto& picked = tokens_of[static_cast<size_t>(e)];
    plan.token.insert(plan.token.end(), picked.begin(), picked.end());
    plan.expert.insert(plan.expert.end(), picked.size(), static_cast<int32_t>(e));
    plan.gate.insert(plan.gate.end(), gates_of[static_cast<size_t>(e)].begin(),
                     gates_of[static_cast<size_t>(e)].end());
  }
}

void Router::mean_probs(std::span<float> out) const {
  const int64_t E = config_.num_experts;
  for (int64_t i = 0; i < E; ++i) {
    double acc = 0.0;
    for (int64_t t = 0; t < tokens_; ++t) acc += probs_[t * E + i];
    out[i] = tokens_ ? static_cast<float>(acc / tokens_) : 0.0f;
  }
}

void Router::backward(const RoutingPlan& plan, std::span<const float> dgate, std::span<float> dx,
                      float loss_weight) {
  const int64_t T = tokens_, E = config_.num_experts;
  if (static_cast<int64_t>(dgate.size()) != plan.assignments())
    throw Error("router backward: dgate has " + std::to_string(dgate.size()) +
                " values, plan has " + std::to_string(plan.assignments()) + " assignments");
  dscores_.resize({T, E});
  dscores_.fill(0.0f);
  add_gate_grads(plan, dgate);
  if (config_.aux_loss_type != AuxLossType::None && config_.aux_loss_coeff > 0)
    add_balance_loss_grads(loss_weight);
  scores_to_logit_grads(loss_weight);
  logit_grads_to_input(dx);
}

// 1. Gate gradients -> score gradients. dgate: [A] -> dscores_: [T, E] +=.
void Router::add_gate_grads(const RoutingPlan& plan, std::span<const float> dgate) {
  const int64_t T = tokens_, E = config_.num_experts;
  const float scale = config_.routed_scaling_factor;
  if (!plan.token_choice) {
    for (int64_t a = 0; a < plan.assignments(); ++a)
      dscores_[static_cast<int64_t>(plan.token[a]) * E + plan.expert[a]] += scale * dgate[a];
    return;
  }
  const int64_t k = plan.top_k;
  const bool renorm = renormalises(config_);
#pragma omp parallel for schedule(static) if (T > 256)
  for (int64_t t = 0; t < T; ++t) {
    const float* s = scores_.data() + t * E;
    const int32_t* picks = selected_.data() + t * k;
    float* ds = dscores_.data() + t * E;
    if (renorm) {
      // g_j = scale * s_j / S,  S = sum of picked s  =>  ds_j = scale (dg_j - sum_i dg_i
      // g_i/scale) / S
      const float S = picked_sum_[t];
      float dot = 0.0f;
      for (int64_t j = 0; j < k; ++j) dot += dgate[t * k + j] * s[picks[j]];
      for (int64_t j = 0; j < k; ++j)
        ds[picks[j]] += scale * (dgate[t * k + j] / S - dot / (S * S));
    } else {
      for (int64_t j = 0; j < k; ++j) ds[picks[j]] += scale * dgate[t * k + j];
    }
  }
}

// 2. Balancing loss: its P is probs_; for softmax scores probs_ == scores_. dscores_: [T, E] +=.
void Router::add_balance_loss_grads(float loss_weight) {
  const int64_t T = tokens_, E = config_.num_experts;
  const int64_t s = balance_window_;
  if (config_.router_type != RouterType::SigmoidBias) {
    balance_loss(probs_.span(), selected_, T, E, config_.top_k, s,
                 config_.aux_loss_coeff * loss_weight, dscores_.span());
    return;
  }
  // p = s / Z  =>  ds_m += (dp_m - sum_i dp_i p_i) / Z; dp is built in dlogits_ as scratch.
  dlogits_.resize({T, E});
  dlogits_.fill(0.0f);
  balance_loss(probs_.span(), selected_, T, E, config_.top_k, s,
               config_.aux_loss_coeff * loss_weight, dlogits_.span());
  for (int64_t t = 0; t < T; ++t) {
    const float* p = probs_.data() + t * E;
    const float* dp = dlogits_.data() + t * E;
    const float* sc = scores_.data() + t * E;
    float Z = 0.0f, dot = 0.0f;
    for (int64_t i = 0; i < E; ++i) {
      Z += sc[i];
      dot += dp[i] * p[i];
    }
    Z += kScoreNormEps;
    for (int64_t i = 0; i < E; ++i) dscores_[t * E + i] += (dp[i] - dot) / Z;
  }
}

// 3. Scores -> logits (softmax or sigmoid Jacobian), then the z-loss on the logits.
// dscores_: [T, E] -> dlogits_: [T, E].
void Router::scores_to_logit_grads(float loss_weight) {
  const int64_t T = tokens_, E = config_.num_experts;
  const bool sigmoid_scores = config_.router_type == RouterType::SigmoidBias;
  dlogits_.resize({T, E});
#pragma omp parallel for schedule(static) if (T > 256)
  for (int64_t t = 0; t < T; ++t) {
    const float* s = scores_.data() + t * E;
    const float* ds = dscores_.data() + t * E;
    float* dl = dlogits_.data() + t * E;
    if (sigmoid_scores) {
      for (int64_t i = 0; i < E; ++i) dl[i] = ds[i] * s[i] * (1.0f - s[i]);
    } else {
      float dot = 0.0f;
      for (int64_t i = 0; i < E; ++i) dot += ds[i] * s[i];
      for (int64_t i = 0; i < E; ++i) dl[i] = s[i] * (ds[i] - dot);
    }
  }
  if (config_.z_loss_coeff > 0)
    moe::z_loss(logits_.span(), T, E, config_.z_loss_coeff * loss_weight, dlogits_.span());
}

// dlogits_: [T, E] -> router weight gradients +=, dx: [T, D] +=.
void Router::logit_grads_to_input(std::span<float> dx) {
  const int64_t T = tokens_, D = config_.hidden_size, E = config_.num_experts;
  // 4. Logits -> router weights and input. dW_r += dl^T input, dinput = dl W_r.
  gemm(Trans::Yes, Trans::No, E, D, T, 1.0f, dlogits_.data(), E, input_.data(), D, 1.0f,
       store_.grad(weight_).data(), D);
  dinput_.resize({T, D});
  gemm(Trans::No, Trans::No, T, D, E, 1.0f, dlogits_.data(), E, store_.value(weight_).data(), D,
       0.0f, dinput_.data(), D);
  if (noisy_) {
    // H = l + n softplus(pre): dpre = dH * n * sigmoid(pre); dlogits_ is reused for dpre.
    for (int64_t i = 0; i < T * E; ++i) dlogits_[i] *= noise_normal_[i] * sigmoid(noise_pre_[i]);
    gemm(Trans::Yes, Trans::No, E, D, T, 1.0f, dlogits_.data(), E, input_.data(), D, 1.0f,
         store_.grad(noise_weight_).data(), D);
    gemm(Trans::No, Trans::No, T, D, E, 1.0f, dlogits_.data(), E,
         store_.value(noise_weight_).data(), D, 1.0f, dinput_.data(), D);
  }
  // 5. Through the jitter multiply: x_r = x * u.
  for (int64_t i = 0; i < T * D; ++i) dx[i] += jittered_ ? dinput_[i] * jitter_[i] : dinput_[i];
}

}  // namespace moe
