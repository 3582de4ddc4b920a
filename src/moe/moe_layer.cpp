#include "moe/moe_layer.h"

#include <algorithm>
#include <cmath>

#include "moe/losses.h"
#include "nn/swiglu.h"
#include "tensor/error.h"

namespace moe {
namespace {

// Sequence routing's router input: row t of each sequence is the mean of the inputs at
// positions 0..min(t, P-1), summed in position order (decoding sums in the same order).
// x: [T, D] -> out: [T, D], T = sequences * S.
void prefix_means(std::span<const float> x, int64_t T, int64_t D, int64_t S, int64_t P,
                  std::span<float> out) {
#pragma omp parallel for schedule(static) if (T * D > 65536)
  for (int64_t b = 0; b < T / S; ++b) {
    const float* xs = x.data() + b * S * D;
    float* os = out.data() + b * S * D;
    const int64_t prefix = std::min(S, P);
    for (int64_t t = 0; t < prefix; ++t)  // running sums first
      for (int64_t d = 0; d < D; ++d)
        os[t * D + d] = (t > 0 ? os[(t - 1) * D + d] : 0.0f) + xs[t * D + d];
    for (int64_t t = 0; t < prefix; ++t)
      for (int64_t d = 0; d < D; ++d) os[t * D + d] /= static_cast<float>(t + 1);
    for (int64_t t = prefix; t < S; ++t)
      std::copy(os + (prefix - 1) * D, os + prefix * D, os + t * D);
  }
}

// Copies row P-1 of each sequence over the later rows: the draws of a fixed route.
void fix_rows_from_prefix(std::span<float> v, int64_t T, int64_t width, int64_t S, int64_t P) {
  if (P >= S) return;
  for (int64_t b = 0; b < T / S; ++b) {
    float* vs = v.data() + b * S * width;
    for (int64_t t = P; t < S; ++t) std::copy(vs + (P - 1) * width, vs + P * width, vs + t * width);
  }
}

}  // namespace

float shared_expert_scale(const float* x, const float* gate, int64_t D) {
  if (!gate) return 1.0f;
  float z = 0.0f;
  for (int64_t d = 0; d < D; ++d) z += x[d] * gate[d];
  return 1.0f / (1.0f + std::exp(-z));
}

MoeLayer::MoeLayer(const MoeConfig& config, ParamStore& store, const std::string& prefix,
                   uint64_t seed, std::unique_ptr<ExpertExchange> exchange)
    : config_(config),
      store_(store),
      router_(config, store, prefix + ".gate"),
      exchange_(std::move(exchange)),
      experts_(exchange_ ? exchange_->local_experts() : config.num_experts, config.hidden_size,
               config.moe_intermediate_size, store, prefix + ".experts"),
      noise_rng_(Rng::for_purpose(seed, 0x6E6F697365)),
      bias_load_(config.num_experts, 0) {
  own_params_ = {router_.weight(), experts_.w13(), experts_.w2()};
  if (config.router_type == RouterType::NoisyTopK) own_params_.push_back(router_.noise_weight());
  if (config.n_shared_experts > 0) {
    const int64_t Fs = config.n_shared_experts * config.shared_expert_intermediate_size;
    shared_w13_ = store.add(prefix + ".shared_experts.w13", {2 * Fs, config.hidden_size});
    shared_w2_ = store.add(prefix + ".shared_experts.w2", {config.hidden_size, Fs});
    own_params_.push_back(shared_w13_);
    own_params_.push_back(shared_w2_);
    if (config.shared_expert_gate) {
      shared_gate_ = store.add(prefix + ".shared_expert_gate.weight", {1, config.hidden_size});
      own_params_.push_back(shared_gate_);
    }
  }
}

void MoeLayer::init_parameters(Rng& rng, float std) {
  for (ParamRef r : own_params_) rng.fill_normal(store_.value(r), 0.0f, std);
}

const RoutingStats& MoeLayer::forward(std::span<const float> x, int64_t tokens, std::span<float> y,
                                      const MoeForwardOptions& options) {
  const int64_t D = config_.hidden_size;
  if (tokens <= 0 || static_cast<int64_t>(x.size()) < tokens * D ||
      static_cast<int64_t>(y.size()) < tokens * D)
    throw Error("MoE layer: x and y must hold [T, D] = [" + std::to_string(tokens) + ", " +
                std::to_string(D) + "] values; got " + std::to_string(x.size()) + " and " +
                std::to_string(y.size()));
  require(store_.allocated(), "MoE layer: parameters not allocated");
  require(all_finite(x.first(tokens * D)), "MoE layer: input contains NaN or inf");
  const int64_t seq_len = options.seq_len > 0 ? options.seq_len : tokens;
  if (tokens % seq_len != 0)
    throw Error("MoE layer: " + std::to_string(tokens) +
                " tokens are not a whole number of sequences of " + std::to_string(seq_len));
  tokens_ = tokens;
  x_.resize({tokens, D});
  std::copy(x.begin(), x.begin() + tokens * D, x_.data());

  seq_len_ = seq_len;

  RouterNoise noise = options.noise;
  const std::span<const float> route_in = router_input(options, noise);
  route(route_in, noise, options);
  run_routed_experts(y);
  if (config_.n_shared_experts > 0) add_shared_experts(y);
  record_stats(options.training);
  return stats_;
}

// Expert parallelism: every rank draws the noise of the whole batch (its P shares) from the
// same stream, as one process does, and routes with its own rows of it.
// t: [P T, width] -> this rank's [T, width].
std::span<const float> MoeLayer::own_rows(const Tensor& t, int64_t width) const {
  const int64_t rank = exchange_ ? exchange_->first_expert() / exchange_->local_experts() : 0;
  return std::span<const float>(t.data() + rank * tokens_ * width, tokens_ * width);
}

int64_t MoeLayer::drawn_rows() const {
  const int64_t ranks = exchange_ ? config_.num_experts / exchange_->local_experts() : 1;
  return tokens_ * ranks;
}

// What the router scores ([T, D]): the caller's router_input, sequence routing's prefix means,
// or x itself. Fills in the noise draws the layer makes itself (sequence routing, expert
// parallelism) where the caller gave none.
std::span<const float> MoeLayer::router_input(const MoeForwardOptions& options,
                                              RouterNoise& noise) {
  const int64_t D = config_.hidden_size;
  if (!options.router_input.empty()) {
    if (static_cast<int64_t>(options.router_input.size()) != tokens_ * D)
      throw Error("MoE layer: router_input must hold [T, D] values");
    return options.router_input;
  }
  if (config_.routing_level == RoutingLevel::Sequence) {
    route_x_.resize({tokens_, D});
    prefix_means(x_.span(), tokens_, D, seq_len_, config_.route_prefix, route_x_.span());
    if (options.training) draw_sequence_noise(noise);
    return route_x_.span();
  }
  if (exchange_ && options.training) draw_batch_noise(noise);
  return x_.span();
}

// Training noise and jitter are drawn per position but repeated from position P-1 on, so the
// route is fixed there in training too.
void MoeLayer::draw_sequence_noise(RouterNoise& noise) {
  const int64_t D = config_.hidden_size, E = config_.num_experts, P = config_.route_prefix;
  const int64_t drawn = drawn_rows();
  if (noise.normal.empty() && config_.uses_noise()) {
    draw_normal_.resize({drawn, E});
    noise_rng_.fill_normal(draw_normal_.span(), 0.0f, 1.0f);
    fix_rows_from_prefix(draw_normal_.span(), drawn, E, seq_len_, P);
    noise.normal = own_rows(draw_normal_, E);
  }
  if (noise.jitter.empty() && config_.jitter_eps > 0) {
    draw_jitter_.resize({drawn, D});
    noise_rng_.fill_uniform(draw_jitter_.span(), 1.0f - config_.jitter_eps,
                            1.0f + config_.jitter_eps);
    fix_rows_from_prefix(draw_jitter_.span(), drawn, D, seq_len_, P);
    noise.jitter = own_rows(draw_jitter_, D);
  }
}

// Expert parallelism's draws for token routing, in the order the router draws them itself:
// jitter, then the normal draws.
void MoeLayer::draw_batch_noise(RouterNoise& noise) {
  const int64_t D = config_.hidden_size, E = config_.num_experts;
  const int64_t drawn = drawn_rows();
  if (noise.jitter.empty() && config_.jitter_eps > 0) {
    draw_jitter_.resize({drawn, D});
    noise_rng_.fill_uniform(draw_jitter_.span(), 1.0f - config_.jitter_eps,
                            1.0f + config_.jitter_eps);
    noise.jitter = own_rows(draw_jitter_, D);
  }
  if (noise.normal.empty() && config_.uses_noise()) {
    draw_normal_.resize({drawn, E});
    noise_rng_.fill_normal(draw_normal_.span(), 0.0f, 1.0f);
    noise.normal = own_rows(draw_normal_, E);
  }
}

// route_in: [T, D] -> plan_ (the router's choice) and the dispatcher's plan of it (capacity,
// drops, segments).
void MoeLayer::route(std::span<const float> route_in, const RouterNoise& noise,
                     const MoeForwardOptions& options) {
  const int64_t tokens = tokens_;
  // Capacity groups split a training batch (and expert choice's batch selection in evaluation,
  // which is the training one) into equal parts, never a decoding step.
  const bool expert_choice = config_.router_type == RouterType::ExpertChoice;
  const int64_t groups = options.training || (expert_choice && options.batch_selection_in_eval)
                             ? config_.capacity_groups
                             : 1;
  if (tokens % groups != 0)
    throw Error("MoE layer: capacity_groups " + std::to_string(groups) + " does not divide the " +
                std::to_string(tokens) + " tokens of the batch");
  const int64_t capacity = config_.capacity(tokens / groups, options.training);
  router_.forward(route_in, tokens, seq_len_, options.training, capacity, groups, noise, noise_rng_,
                  plan_, options.batch_selection_in_eval);
  if (expert_choice && options.training) {
    // Thresholds from every group of the whole batch: under expert parallelism each process
    // adds the others' groups, so every replica moves its thresholds alike.
    const auto local = router_.last_pick_sums();
    last_pick_sums_.assign(local.begin(), local.end());
    if (exchange_) exchange_->sum_scores(last_pick_sums_);
    router_.update_thresholds(last_pick_sums_);
  }
  dispatcher_.plan(plan_, plan_.token_choice ? capacity : -1, config_.drop_policy, groups);
}

// x_: [T, D] -> permuted xp_ [kept, D] -> experts (here, or across ranks) -> yp_ [kept, D]
// -> y: [T, D] = sum over each token's kept assignments of gate * yp.
void MoeLayer::run_routed_experts(std::span<float> y) {
  const int64_t D = config_.hidden_size;
  const int64_t kept = dispatcher_.kept();
  xp_.resize({kept, D});
  yp_.resize({kept, D});
  dispatcher_.permute(x_.span(), D, xp_.span());
  if (exchange_) {
    exchange_->plan(dispatcher_.segment_offsets());
    xl_.resize({exchange_->local_rows(), D});
    yl_.resize({exchange_->local_rows(), D});
    exchange_->dispatch(xp_.span(), D, xl_.span());
    experts_.forward(xl_.span(), exchange_->local_offsets(), yl_.span());
    exchange_->combine(yl_.span(), D, yp_.span());
  } else {
    experts_.forward(xp_.span(), dispatcher_.segment_offsets(), yp_.span());
  }
  dispatcher_.combine(yp_.span(), plan_.gate, D, y);
}

// y: [T, D] += scale_t * SwiGLU_shared(x_t), scale_t = sigmoid(x_t w_g) with a gate, else 1.
void MoeLayer::add_shared_experts(std::span<float> y) {
  const int64_t tokens = tokens_, D = config_.hidden_size;
  const int64_t Fs = config_.n_shared_experts * config_.shared_expert_intermediate_size;
  shared_h13_.resize({tokens, 2 * Fs});
  shared_act_.resize({tokens, Fs});
  shared_out_.resize({tokens, D});
  swiglu_forward({tokens, D, Fs}, x_.span(), store_.value(shared_w13_), store_.value(shared_w2_),
                 shared_h13_.span(), shared_act_.span(), shared_out_.span());
  shared_scale_.resize({tokens});
  const float* wg = config_.shared_expert_gate ? store_.value(shared_gate_).data() : nullptr;
#pragma omp parallel for schedule(static) if (tokens * D > 65536)
  for (int64_t t = 0; t < tokens; ++t) {
    const float scale = shared_expert_scale(x_.data() + t * D, wg, D);
    shared_scale_[t] = scale;
    for (int64_t d = 0; d < D; ++d) y[t * D + d] += scale * shared_out_[t * D + d];
  }
}

// stats_ of this forward; a training forward's loads also count towards the bias update.
void MoeLayer::record_stats(bool training) {
  const int64_t E = config_.num_experts;
  const auto routed = dispatcher_.routed_counts();
  const auto offsets = dispatcher_.segment_offsets();
  stats_.tokens_per_expert.assign(routed.begin(), routed.end());
  stats_.kept_per_expert.resize(E);
  for (int64_t e = 0; e < E; ++e) stats_.kept_per_expert[e] = offsets[e + 1] - offsets[e];
  stats_.mean_prob.resize(E);
  router_.mean_probs(stats_.mean_prob);
  stats_.tokens = tokens_;
  stats_.assignments = plan_.assignments();
  stats_.dropped = dispatcher_.dropped();
  stats_.unrouted_tokens = dispatcher_.tokens_without_rows();
  stats_.aux_loss = router_.aux_loss();
  stats_.z_loss = router_.z_loss();
  if (training)
    for (int64_t e = 0; e < E; ++e) bias_load_[e] += routed[e];
}

void MoeLayer::backward(std::span<const float> dy, std::span<float> dx, bool accumulate_grads,
                        float router_loss_weight) {
  const int64_t T = tokens_, D = config_.hidden_size;
  require(static_cast<int64_t>(dy.size()) >= T * D && static_cast<int64_t>(dx.size()) >= T * D,
          "MoE layer backward: dy and dx must hold [T, D] values");
  if (!accumulate_grads) {
    // Experts and shared experts overwrite their gradients; the router's are cleared here.
    for (ParamRef r : {router_.weight(), router_.noise_weight(), shared_gate_}) {
      auto g = store_.grad(r);  // an unregistered ParamRef is empty
      std::fill(g.begin(), g.end(), 0.0f);
    }
  }
  run_routed_experts_backward(dy, dx, accumulate_grads);
  router_backward(dx, router_loss_weight);
  if (config_.n_shared_experts > 0) shared_experts_backward(dy, dx, accumulate_grads);
}

// dy: [T, D] -> dx: [T, D] (written), the gate gradients in dgate_ and the experts' gradients.
void MoeLayer::run_routed_experts_backward(std::span<const float> dy, std::span<float> dx,
                                           bool accumulate_grads) {
  const int64_t D = config_.hidden_size;
  const int64_t kept = dispatcher_.kept();
  dyp_.resize({kept, D});
  dxp_.resize({kept, D});
  dgate_.resize(plan_.assignments());
  dispatcher_.combine_backward(dy, yp_.span(), plan_.gate, D, dyp_.span(), dgate_);
  if (exchange_) {
    dyl_.resize({exchange_->local_rows(), D});
    dxl_.resize({exchange_->local_rows(), D});
    exchange_->dispatch(dyp_.span(), D, dyl_.span());
    experts_.backward(xl_.span(), exchange_->local_offsets(), dyl_.span(), dxl_.span(),
                      accumulate_grads);
    exchange_->combine(dxl_.span(), D, dxp_.span());
  } else {
    experts_.backward(xp_.span(), dispatcher_.segment_offsets(), dyp_.span(), dxp_.span(),
                      accumulate_grads);
  }
  dispatcher_.permute_backward(dxp_.span(), D, dx);
}

// Adds the router's share to dx: [T, D] (through the route prefix's means under sequence
// routing) and its gradients into the router weights.
void MoeLayer::router_backward(std::span<float> dx, float router_loss_weight) {
  const int64_t T = tokens_, D = config_.hidden_size;
  if (config_.routing_level == RoutingLevel::Sequence) {
    // r_t = mean of x_0..x_m, m = min(t, P-1)  =>  dx_i += sum over t >= i of dr_t / (m + 1),
    // for i <= P-1: a suffix sum per sequence.
    droute_.resize({T, D});
    droute_.fill(0.0f);
    router_.backward(plan_, dgate_, droute_.span(), router_loss_weight);
    const int64_t S = seq_len_, prefix = std::min(S, config_.route_prefix);
    droute_acc_.resize({T / S, D});
    droute_acc_.fill(0.0f);
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t b = 0; b < T / S; ++b) {
      const float* dr = droute_.data() + b * S * D;
      float* dxs = dx.data() + b * S * D;
      float* acc = droute_acc_.data() + b * D;
      for (int64_t t = S - 1; t >= 0; --t) {
        const float w = 1.0f / static_cast<float>(std::min(t, prefix - 1) + 1);
        for (int64_t d = 0; d < D; ++d) acc[d] += dr[t * D + d] * w;
        if (t < prefix)
          for (int64_t d = 0; d < D; ++d) dxs[t * D + d] += acc[d];
      }
    }
  } else {
    router_.backward(plan_, dgate_, dx, router_loss_weight);
  }
}

// dy: [T, D]; adds the shared experts' (and their gate's) share to dx: [T, D].
void MoeLayer::shared_experts_backward(std::span<const float> dy, std::span<float> dx,
                                       bool accumulate_grads) {
  const int64_t T = tokens_, D = config_.hidden_size;
  const int64_t Fs = config_.n_shared_experts * config_.shared_expert_intermediate_size;
  dshared_.resize({T, D});
  dshared_h13_.resize({T, 2 * Fs});
  dshared_x_.resize({T, D});
  const bool gated = config_.shared_expert_gate;
  float* dwg = gated ? store_.grad(shared_gate_).data() : nullptr;
  const float* wg = gated ? store_.value(shared_gate_).data() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    const float s = shared_scale_[t];
    float dscale = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      dshared_[t * D + d] = s * dy[t * D + d];
      dscale += dy[t * D + d] * shared_out_[t * D + d];
    }
    if (gated) {
      // scale = sigmoid(z), z = x . w_g
      const float dz = dscale * s * (1.0f - s);
      for (int64_t d = 0; d < D; ++d) {
        dwg[d] += dz * x_[t * D + d];
        dx[t * D + d] += dz * wg[d];
      }
    }
  }
  swiglu_backward({T, D, Fs}, x_.span(), store_.value(shared_w13_), store_.value(shared_w2_),
                  shared_h13_.span(), shared_act_.span(), dshared_.span(), dshared_h13_.span(),
                  dshared_x_.span(), store_.grad(shared_w13_), store_.grad(shared_w2_),
                  accumulate_grads);
  for (int64_t i = 0; i < T * D; ++i) dx[i] += dshared_x_[i];
}

void MoeLayer::update_expert_bias() {
  if (config_.router_type == RouterType::SigmoidBias) {
    if (exchange_) exchange_->sum_loads(bias_load_);  // every rank moves by the global load
    moe::update_expert_bias(router_.expert_bias(), bias_load_, config_.bias_update_speed);
  }
  std::fill(bias_load_.begin(), bias_load_.end(), 0);
}

}  // namespace moe
