#pragma once
// Transformer: the decoder-only language model of docs/ARCHITECTURE.md's data path.
//
//   x_0 = embed(tokens)
//   block l:  h   = x_l + Attention(RMSNorm(x_l))            (causal, RoPE, GQA)
//             x_{l+1} = h + FFN(RMSNorm(h))                  (dense SwiGLU or the MoE layer)
//   logits = RMSNorm(x_L) W_head^T,   loss = mean cross-entropy + sum of router losses
//
// Every parameter lives in one ParamStore under Hugging Face-style names (see the .cpp);
// every saved activation is a member of its Block, so the owner of each buffer is plain.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "moe/moe_layer.h"
#include "nn/attention.h"
#include "tensor/params.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace moe {

struct ModelStepOptions {
  bool training = true;      // routing noise, jitter and the training capacity factor
  bool compute_grad = true;  // keep what backward() needs and build dlogits in place
  float grad_scale = 1.0f;   // weight of this batch in accumulated gradients (1/n of n batches)
  // Evaluation of expert choice with the training-time batch selection (not causal: the
  // "as trained" validation figure) instead of the learned thresholds.
  bool batch_selection_in_eval = false;
};

class Transformer {
 public:
  // With `exchange` (expert parallelism) every MoE layer gets one and holds only its local
  // experts.
  Transformer(const ModelConfig& config, ParamStore& store, uint64_t seed = 0,
              const ExpertExchangeFactory& exchange = {});

  // Normal(0, initializer_range) for every matrix, 1 for RMSNorm weights.
  void init_parameters(Rng& rng);

  // tokens, targets: [B, S] (targets -1 are ignored). Returns the mean cross-entropy over
  // the non-ignored targets; router losses are in router_loss().
  double forward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int64_t batch,
                 int64_t seq, const ModelStepOptions& options = {});
  // Adds grad_scale * d(cross-entropy + router losses) / d(parameters) to the store's
  // gradients. Needs a forward with compute_grad.
  void backward();

  // [B*S, V] logits of the last forward run without compute_grad.
  std::span<const float> logits() const;
  // Sum over MoE blocks of aux + z loss of the last forward (already weighted).
  double router_loss() const;

  const ModelConfig& config() const { return config_; }
  int64_t num_layers() const { return static_cast<int64_t>(blocks_.size()); }
  // The MoE layer of block `layer`, or nullptr for a dense block.
  MoeLayer* moe_layer(int64_t layer) { return blocks_.at(layer).moe.get(); }
  const MoeLayer* moe_layer(int64_t layer) const { return blocks_.at(layer).moe.get(); }
  // Aux-loss-free balancing: each MoE layer moves its bias by the loads it saw.
  void update_expert_bias();

 private:
  struct Block {
    ParamRef attn_norm, wqkv, wo, ffn_norm;
    ParamRef qkv_bias, q_norm, k_norm;  // set only when the config asks for them
    ParamRef w13, w2;                   // dense FFN (when moe is null)
    std::unique_ptr<MoeLayer> moe;
    // Saved activations.
    Tensor x;              // [T, D] block input (residual stream)
    Tensor n1, rstd1;      // [T, D], [T]
    Tensor qkv, ctx, lse;  // [T, (H+2KV) hd], [T, H hd], [B, H, S]
    Tensor qkv_pre;        // [T, (H+2KV) hd] projection + bias before q/k norm and clamp
    Tensor h;              // [T, D] residual after attention
    Tensor n2, rstd2;      // [T, D], [T]
    Tensor h13, act;       // [T, 2F], [T, F] dense FFN
  };

  // The block's q/k/v bias, q/k norm and clamp, as the attention kernels take them (with
  // `saved`, b.qkv_pre, when `training`), and their gradients.
  QkvExtras qkv_extras(Block& b, bool training);
  QkvExtrasGrads qkv_extras_grads(const Block& b);

  ModelConfig config_;
  ParamStore& store_;
  AttentionShape attn_shape_{};
  RopeTable rope_;
  ParamRef embed_, final_norm_, head_;
  std::vector<Block> blocks_;

  int64_t batch_ = 0, seq_ = 0;
  float grad_scale_ = 1.0f;
  bool have_grad_state_ = false;
  std::vector<int32_t> tokens_;
  Tensor final_x_, final_n_, final_rstd_;  // [T, D], [T, D], [T]
  Tensor logits_;                          // [T, V]; dlogits after a compute_grad forward
  // Scratch shared by all blocks.
  Tensor out_, dres_, dn_, dqkv_, dctx_, attn_scratch_, dh13_;
};

}  // namespace moe
