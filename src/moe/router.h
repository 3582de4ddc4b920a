#pragma once
// Router: turns token activations into a RoutingPlan (who goes to which expert with what gate)
// and carries the gate gradients back to its weights and its input. All math in fp32.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moe/config.h"
#include "moe/selection.h"
#include "tensor/params.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace moe {

// A list of (token, expert, gate) assignments. Token choice: A = T*k, assignment a = t*k + j
// is token t's j-th pick (highest score first). Expert choice over G capacity groups of T/G
// tokens: A = E*G*C, a = (e*G + g)*C + c is expert e's c-th pick in group g (highest first).
struct RoutingPlan {
  int64_t tokens = 0;
  int64_t experts = 0;
  int64_t top_k = 0;  // picks per token (token choice); for expert choice the T*k of capacity
  bool token_choice = true;
  std::vector<int32_t> token;   // [A]
  std::vector<int32_t> expert;  // [A]
  std::vector<float> gate;      // [A]
  int64_t assignments() const { return static_cast<int64_t>(token.size()); }
};

// Random draws for the training-time noise, passed in by tests so a reference can use the same
// ones; when empty, the router draws them from its own Rng.
struct RouterNoise {
  std::span<const float> normal;  // [T, E] N(0,1) for noisy top-k
  std::span<const float> jitter;  // [T, D] U(1-eps, 1+eps) multipliers for jitter
};

class Router {
 public:
  // Registers `prefix.weight` [E, D] (and `prefix.noise_weight` [E, D] for noisy top-k).
  Router(const MoeConfig& config, ParamStore& store, const std::string& prefix);

  // x: [T, D] -> plan. seq_len splits T into sequences for the sequence-level loss; groups
  // (dividing T) splits it into the capacity groups, each with its own batch-level balancing
  // loss and, for expert choice, its own selection. capacity is used by expert choice only (C
  // per expert and group). Expert choice selects within each group in training and, in
  // evaluation, by its thresholds, unless batch_selection_in_eval asks for the trained
  // selection.
  void forward(std::span<const float> x, int64_t tokens, int64_t seq_len, bool training,
               int64_t capacity, int64_t groups, const RouterNoise& noise, Rng& rng,
               RoutingPlan& plan, bool batch_selection_in_eval = false);

  // plan: the one forward produced  dgate: [A] -> dx: [T, D] ADDED to; parameter gradients
  // accumulated. Includes the gradients of aux_loss() and z_loss(), which enter the total loss
  // with weight loss_weight (1 for one batch; 1/n when n micro-batches are accumulated).
  void backward(const RoutingPlan& plan, std::span<const float> dgate, std::span<float> dx,
                float loss_weight = 1.0f);

  float aux_loss() const { return aux_loss_; }
  float z_loss() const { return z_loss_; }
  // Mean over tokens of each expert's normalised score -> out: [E]
  void mean_probs(std::span<float> out) const;
  // Aux-loss-free selection bias b: [E] (SigmoidBias only; zeros otherwise).
  std::span<float> expert_bias() { return bias_.span(); }
  std::span<const float> expert_bias() const { return bias_.span(); }

  // Expert choice's selection thresholds theta: [E]. After each training forward the MoE layer
  // moves theta_e toward the score of the last (C-th) token expert e took, averaged over the
  // capacity groups (of every process, under expert parallelism), as a moving average with
  // momentum kThresholdMomentum (the first one sets it). Evaluation sends a token to every
  // expert whose score reaches theta_e, so a token's route depends on that token alone: the
  // same in a full forward, in decoding, alone or batched.
  static constexpr float kThresholdMomentum = 0.99f;
  // After an expert-choice selection: [E + 1], each expert's score at its last pick summed over
  // the groups, then the number of groups. Sums of these over processes stay this layout.
  std::span<const double> last_pick_sums() const { return last_pick_sums_; }
  // Moves theta toward sums[e] / sums[E] (sums: [E + 1], as last_pick_sums() gives them).
  void update_thresholds(std::span<const double> sums);
  std::span<float> expert_threshold() { return threshold_.span(); }
  std::span<const float> expert_threshold() const { return threshold_.span(); }
  // NaN until update_thresholds (after a training forward) or a checkpoint sets them.
  bool thresholds_estimated() const;

  ParamRef weight() const { return weight_; }
  ParamRef noise_weight() const { return noise_weight_; }

 private:
  // The steps of forward, in order: input (x, or x * jitter) -> logits (+ noise) -> scores and
  // probabilities -> selection -> balancing and z-losses.
  void prepare_input(std::span<const float> x, int64_t tokens, const RouterNoise& noise, Rng& rng);
  void compute_logits(int64_t tokens, const RouterNoise& noise, Rng& rng);
  void compute_scores(int64_t tokens);
  void compute_losses(int64_t tokens, int64_t seq_len, int64_t groups);
  void select_token_choice(int64_t tokens, RoutingPlan& plan);
  void select_expert_choice(int64_t tokens, int64_t capacity, int64_t groups, RoutingPlan& plan);
  void select_by_threshold(int64_t tokens, RoutingPlan& plan);
  // The steps of backward, in order: gates -> scores (+ balancing loss) -> logits (+ z-loss)
  // -> weights and input.
  void add_gate_grads(const RoutingPlan& plan, std::span<const float> dgate);
  void add_balance_loss_grads(float loss_weight);
  void scores_to_logit_grads(float loss_weight);
  void logit_grads_to_input(std::span<float> dx);

  MoeConfig config_;
  ParamStore& store_;
  ParamRef weight_;        // [E, D]
  ParamRef noise_weight_;  // [E, D], noisy top-k only
  Tensor bias_;            // [E]
  Tensor threshold_;       // [E] expert choice only; NaN = not estimated yet

  // Saved by forward for backward.
  int64_t tokens_ = 0;
  int64_t seq_len_ = 0;
  int64_t balance_window_ = 0;  // tokens per balancing-loss window (sequence, group or batch)
  bool jittered_ = false;
  bool noisy_ = false;
  Tensor input_;                   // [T, D] router input (x, or x * jitter)
  Tensor jitter_;                  // [T, D]
  Tensor logits_;                  // [T, E] the logits routed on (H for noisy top-k)
  Tensor noise_pre_;               // [T, E] x W_noise^T
  Tensor noise_normal_;            // [T, E] n
  Tensor scores_;                  // [T, E] softmax(logits) or sigmoid(logits)
  Tensor probs_;                   // [T, E] normalised scores (the balancing loss's P)
  std::vector<int32_t> selected_;  // [T, k] token choice picks
  std::vector<float> picked_sum_;  // [T] sum of picked scores + 1e-20 (renormalisation)
  float aux_loss_ = 0.0f;
  float z_loss_ = 0.0f;
  std::vector<double> last_pick_sums_;  // [E + 1] expert choice, see last_pick_sums()

  // Backward scratch.
  Tensor dscores_;                      // [T, E]
  Tensor dlogits_;                      // [T, E]
  Tensor dinput_;                       // [T, D]
  std::vector<int32_t> order_scratch_;  // [threads, max(E, T)] index scratch for selection
  std::vector<float> select_scratch_;   // [threads, E] selection scores
};

}  // namespace moe
