#pragma once
// MoeLayer: router -> dispatcher.permute -> experts -> dispatcher.combine (+ shared experts).
// y = sum over kept picks g_i FFN_i(x) + [sigmoid(x w_g)] * sum over shared FFN_s(x).
// The residual is added by the caller; a dropped assignment contributes 0 here.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moe/config.h"
#include "moe/dispatcher.h"
#include "moe/expert_exchange.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "tensor/params.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace moe {

struct RoutingStats {
  std::vector<int64_t> tokens_per_expert;  // [E] assignments routed, before dropping
  std::vector<int64_t> kept_per_expert;    // [E] assignments processed
  std::vector<float> mean_prob;            // [E] mean normalised router score
  int64_t tokens = 0;                      // T
  int64_t assignments = 0;                 // routed assignments (T*k for token choice)
  int64_t dropped = 0;                     // assignments over capacity
  int64_t unrouted_tokens = 0;             // tokens no expert processed (residual only)
  float aux_loss = 0.0f;                   // weighted (alpha already applied)
  float z_loss = 0.0f;                     // weighted (beta already applied)
};

struct MoeForwardOptions {
  bool training = true;
  int64_t seq_len = 0;  // tokens per sequence for the sequence-level loss; 0 = all T
  RouterNoise noise;    // fixed draws (tests); empty = drawn from the layer's Rng
  // Evaluation of expert choice: select across the batch as in training, in its capacity
  // groups (batch-dependent and not causal), instead of by the learned thresholds.
  bool batch_selection_in_eval = false;
  // Sequence routing in decoding: the router's input [T, D] (the running prefix mean the
  // caller keeps), instead of the mean over this call's tokens.
  std::span<const float> router_input = {};
};

// Qwen2-MoE's gate on the shared experts' output: sigmoid(x . w_g), in fp32; 1 without a
// gate (w_g nullptr). x, w_g: [D]. The training layer and the inference engine both use it.
float shared_expert_scale(const float* x, const float* gate, int64_t D);

class MoeLayer {
 public:
  // Registers its parameters under `prefix` (router: prefix.gate, experts: prefix.experts,
  // shared: prefix.shared_experts, prefix.shared_expert_gate). seed feeds the noise Rng.
  // With an exchange (expert parallelism) the layer holds only the exchange's local experts
  // ([E_local, ...] under the same names) and runs the others' rows through it.
  MoeLayer(const MoeConfig& config, ParamStore& store, const std::string& prefix, uint64_t seed = 0,
           std::unique_ptr<ExpertExchange> exchange = nullptr);

  // Fills this layer's parameters with N(0, std^2).
  void init_parameters(Rng& rng, float std = 0.02f);

  // x: [T, D] -> y: [T, D] overwritten. Throws Error on a non-finite input.
  const RoutingStats& forward(std::span<const float> x, int64_t tokens, std::span<float> y,
                              const MoeForwardOptions& options = {});
  // dy: [T, D] -> dx: [T, D] overwritten. Includes the router losses' gradients (they enter
  // the total loss with weight router_loss_weight). Parameter gradients are accumulated into
  // the store, or overwritten when !accumulate_grads (saves a read of every expert's gradient).
  void backward(std::span<const float> dy, std::span<float> dx, bool accumulate_grads = true,
                float router_loss_weight = 1.0f);

  // aux + z loss of the last forward: add it to the training loss.
  float loss() const { return stats_.aux_loss + stats_.z_loss; }
  const RoutingStats& stats() const { return stats_; }
  // Aux-loss-free balancing: moves the selection bias by the load seen in training forwards
  // since the last call (SigmoidBias only; a no-op otherwise).
  void update_expert_bias();
  // The expert-parallel exchange, or nullptr when this process holds every expert.
  const ExpertExchange* exchange() const { return exchange_.get(); }

  const MoeConfig& config() const { return config_; }
  Router& router() { return router_; }
  const Router& router() const { return router_; }
  const Experts& experts() const { return experts_; }
  ParamRef shared_w13() const { return shared_w13_; }
  ParamRef shared_w2() const { return shared_w2_; }
  ParamRef shared_gate() const { return shared_gate_; }
  const RoutingPlan& plan() const { return plan_; }
  const Dispatcher& dispatcher() const { return dispatcher_; }
  // The routing-noise stream (noisy top-k, jitter): checkpoints save and restore its state.
  Rng& noise_rng() { return noise_rng_; }

 private:
  // The steps of forward, in order; each reads and writes the members below.
  std::span<const float> router_input(const MoeForwardOptions& options, RouterNoise& noise);
  void draw_sequence_noise(RouterNoise& noise);
  void draw_batch_noise(RouterNoise& noise);
  std::span<const float> own_rows(const Tensor& t, int64_t width) const;
  int64_t drawn_rows() const;
  void route(std::span<const float> route_in, const RouterNoise& noise,
             const MoeForwardOptions& options);
  void run_routed_experts(std::span<float> y);
  void add_shared_experts(std::span<float> y);
  void record_stats(bool training);
  // The steps of backward, in order.
  void run_routed_experts_backward(std::span<const float> dy, std::span<float> dx,
                                   bool accumulate_grads);
  void router_backward(std::span<float> dx, float router_loss_weight);
  void shared_experts_backward(std::span<const float> dy, std::span<float> dx,
                               bool accumulate_grads);

  MoeConfig config_;
  ParamStore& store_;
  Router router_;
  Dispatcher dispatcher_;
  std::unique_ptr<ExpertExchange> exchange_;
  Experts experts_;
  ParamRef shared_w13_, shared_w2_, shared_gate_;
  std::vector<ParamRef> own_params_;
  Rng noise_rng_;

  RoutingPlan plan_;
  RoutingStats stats_;
  std::vector<int64_t> bias_load_;      // [E] training loads since the last bias update
  std::vector<double> last_pick_sums_;  // [E + 1] expert choice: the thresholds' update
  int64_t tokens_ = 0;
  Tensor x_;        // [T, D] saved input
  Tensor route_x_;  // [T, D] sequence routing: the prefix means the router scores
  // Noise draws the layer makes itself: sequence routing (fixed from position P-1 on) and
  // expert parallelism (the whole batch's, [P T, ...]).
  Tensor draw_normal_;  // [T, E], or [P T, E] under expert parallelism
  Tensor draw_jitter_;  // [T, D], or [P T, D]
  int64_t seq_len_ = 0;
  Tensor xp_;            // [kept, D] permuted input
  Tensor yp_;            // [kept, D] expert outputs
  Tensor xl_, yl_;       // [local rows, D] expert parallelism: the local experts' rows
  Tensor shared_h13_;    // [T, 2 S F_s]
  Tensor shared_act_;    // [T, S F_s]
  Tensor shared_out_;    // [T, D]
  Tensor shared_scale_;  // [T] sigmoid(x w_g)
  // Backward scratch.
  Tensor dyp_, dxp_, dyl_, dxl_, dshared_, dshared_h13_, dshared_x_, droute_, droute_acc_;
  std::vector<float> dgate_;
};

}  // namespace moe
