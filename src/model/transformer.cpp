#include "model/transformer.h"

#include <omp.h>

#include <algorithm>

#include "nn/cross_entropy.h"
#include "nn/embedding.h"
#include "nn/rmsnorm.h"
#include "nn/swiglu.h"
#include "tensor/error.h"
#include "tensor/gemm.h"

namespace moe {
namespace {

void add(std::span<const float> a, std::span<const float> b, std::span<float> out) {
  const int64_t n = static_cast<int64_t>(out.size());
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace

// Parameter names follow Hugging Face's Mixtral/Llama layout; q/k/v and gate/up are stored
// stacked (one GEMM each) and split only when a checkpoint is exported.
Transformer::Transformer(const ModelConfig& config, ParamStore& store, uint64_t seed,
                         const ExpertExchangeFactory& exchange)
    : config_(config), store_(store) {
  config_.validate();
  const int64_t V = config_.vocab_size, D = config_.hidden_size;
  const int64_t H = config_.num_attention_heads, KV = config_.num_key_value_heads;
  const int64_t hd = config_.resolved_head_dim();
  attn_shape_ = {0, 0, D, H, KV, hd};
  rope_ = RopeTable(hd, config_.max_position_embeddings, config_.rope_theta);

  embed_ = store.add("model.embed_tokens.weight", {V, D});
  blocks_.resize(config_.num_hidden_layers);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    Block& b = blocks_[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    b.attn_norm = store.add(p + "input_layernorm.weight", {D});
    b.wqkv = store.add(p + "self_attn.qkv_proj.weight", {(H + 2 * KV) * hd, D});
    b.wo = store.add(p + "self_attn.o_proj.weight", {D, H * hd});
    if (config_.qkv_bias)
      b.qkv_bias = store.add(p + "self_attn.qkv_proj.bias", {(H + 2 * KV) * hd});
    if (config_.qk_norm) {
      b.q_norm = store.add(p + "self_attn.q_norm.weight", {H * hd});
      b.k_norm = store.add(p + "self_attn.k_norm.weight", {KV * hd});
    }
    b.ffn_norm = store.add(p + "post_attention_layernorm.weight", {D});
    if (config_.is_moe_layer(l)) {
      // Each MoE layer draws its routing noise from its own stream.
      b.moe = std::make_unique<MoeLayer>(*config_.moe, store, p + "block_sparse_moe",
                                         seed * 1000003 + static_cast<uint64_t>(l),
                                         exchange ? exchange() : nullptr);
    } else {
      const int64_t F = config_.intermediate_size;
      b.w13 = store.add(p + "mlp.gate_up_proj.weight", {2 * F, D});
      b.w2 = store.add(p + "mlp.down_proj.weight", {D, F});
    }
  }
  final_norm_ = store.add("model.norm.weight", {D});
  head_ = config_.tie_word_embeddings ? embed_ : store.add("lm_head.weight", {V, D});
}

void Transformer::init_parameters(Rng& rng) {
  const float std = config_.initializer_range;
  auto normal = [&](ParamRef r) { rng.fill_normal(store_.value(r), 0.0f, std); };
  auto ones = [&](ParamRef r) {
    auto v = store_.value(r);
    std::fill(v.begin(), v.end(), 1.0f);
  };
  normal(embed_);
  for (Block& b : blocks_) {
    ones(b.attn_norm);
    normal(b.wqkv);
    if (config_.qkv_bias) std::ranges::fill(store_.value(b.qkv_bias), 0.0f);
    if (config_.qk_norm) {
      ones(b.q_norm);
      ones(b.k_norm);
    }
    normal(b.wo);
    ones(b.ffn_norm);
    if (b.moe) {
      b.moe->init_parameters(rng, std);
    } else {
      normal(b.w13);
      normal(b.w2);
    }
  }
  ones(final_norm_);
  if (!config_.tie_word_embeddings) normal(head_);
}

QkvExtras Transformer::qkv_extras(Block& b, bool training) {
  QkvExtras e;
  if (config_.qkv_bias) e.bias = store_.value(b.qkv_bias);
  if (config_.qk_norm) {
    e.q_norm = store_.value(b.q_norm);
    e.k_norm = store_.value(b.k_norm);
  }
  e.norm_eps = config_.rms_norm_eps;
  e.clip = config_.clip_qkv;
  if (training && e.needs_saved()) e.saved = b.qkv_pre.span();
  return e;
}

QkvExtrasGrads Transformer::qkv_extras_grads(const Block& b) {
  QkvExtrasGrads g;
  if (config_.qkv_bias) g.bias = store_.grad(b.qkv_bias);
  if (config_.qk_norm) {
    g.q_norm = store_.grad(b.q_norm);
    g.k_norm = store_.grad(b.k_norm);
  }
  return g;
}

double Transformer::forward(std::span<const int32_t> tokens, std::span<const int32_t> targets,
                            int64_t batch, int64_t seq, const ModelStepOptions& options) {
  require(store_.allocated(), "transformer: parameters not allocated");
  if (batch <= 0 || seq <= 0 || static_cast<int64_t>(tokens.size()) != batch * seq ||
      static_cast<int64_t>(targets.size()) != batch * seq)
    throw Error("transformer: tokens and targets must hold [batch, seq] = [" +
                std::to_string(batch) + ", " + std::to_string(seq) + "] ids; got " +
                std::to_string(tokens.size()) + " and " + std::to_string(targets.size()));
  if (seq > config_.max_position_embeddings)
    throw Error("transformer: sequence length " + std::to_string(seq) +
                " exceeds max_position_embeddings " +
                std::to_string(config_.max_position_embeddings));
  const int64_t T = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  const int64_t H = config_.num_attention_heads, F = config_.intermediate_size;
  batch_ = batch;
  seq_ = seq;
  grad_scale_ = options.grad_scale;
  have_grad_state_ = false;
  tokens_.assign(tokens.begin(), tokens.end());
  attn_shape_.batch = batch;
  attn_shape_.seq = seq;
  attn_scratch_.resize({attention_scratch_size(attn_shape_, omp_get_max_threads())});
  out_.resize({T, D});

  if (blocks_.empty()) return 0.0;
  blocks_[0].x.resize({T, D});
  embedding_forward(V, D, tokens, store_.value(embed_), blocks_[0].x.span());
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = blocks_[l];
    Tensor& next = l + 1 < blocks_.size() ? blocks_[l + 1].x : final_x_;
    b.n1.resize({T, D});
    b.rstd1.resize({T});
    b.qkv.resize({T, attn_shape_.qkv_width()});
    if (options.compute_grad && (config_.qk_norm || config_.clip_qkv > 0.0f))
      b.qkv_pre.resize({T, attn_shape_.qkv_width()});
    b.ctx.resize({T, attn_shape_.ctx_width()});
    b.lse.resize({batch, H, seq});
    b.h.resize({T, D});
    b.n2.resize({T, D});
    b.rstd2.resize({T});
    next.resize({T, D});

    rmsnorm_forward(T, D, config_.rms_norm_eps, b.x.span(), store_.value(b.attn_norm), b.n1.span(),
                    b.rstd1.span());
    attention_forward(attn_shape_, rope_, b.n1.span(), store_.value(b.wqkv), store_.value(b.wo),
                      b.qkv.span(), b.ctx.span(), b.lse.span(), out_.span(), attn_scratch_.span(),
                      qkv_extras(b, options.compute_grad));
    add(b.x.span(), out_.span(), b.h.span());
    rmsnorm_forward(T, D, config_.rms_norm_eps, b.h.span(), store_.value(b.ffn_norm), b.n2.span(),
                    b.rstd2.span());
    if (b.moe) {
      MoeForwardOptions moe_options;
      moe_options.training = options.training;
      moe_options.batch_selection_in_eval = options.batch_selection_in_eval;
      moe_options.seq_len = seq;
      b.moe->forward(b.n2.span(), T, out_.span(), moe_options);
    } else {
      b.h13.resize({T, 2 * F});
      b.act.resize({T, F});
      swiglu_forward({T, D, F}, b.n2.span(), store_.value(b.w13), store_.value(b.w2), b.h13.span(),
                     b.act.span(), out_.span());
    }
    add(b.h.span(), out_.span(), next.span());
  }

  final_n_.resize({T, D});
  final_rstd_.resize({T});
  rmsnorm_forward(T, D, config_.rms_norm_eps, final_x_.span(), store_.value(final_norm_),
                  final_n_.span(), final_rstd_.span());
  logits_.resize({T, V});
  gemm(Trans::No, Trans::Yes, T, V, D, 1.0f, final_n_.data(), D, store_.value(head_).data(), D,
       0.0f, logits_.data(), V);
  if (!all_finite(logits_.span()))
    throw Error("transformer: non-finite logits (the weights or activations overflowed)");
  std::span<float> dlogits = options.compute_grad ? logits_.span() : std::span<float>{};
  const double loss = cross_entropy(T, V, logits_.span(), targets, dlogits, options.grad_scale);
  have_grad_state_ = options.compute_grad;
  return loss;
}

std::span<const float> Transformer::logits() const {
  require(!have_grad_state_, "transformer: logits were replaced by their gradient");
  return logits_.span();
}

double Transformer::router_loss() const {
  double total = 0.0;
  for (const Block& b : blocks_)
    if (b.moe) total += b.moe->loss();
  return total;
}

void Transformer::backward() {
  require(have_grad_state_, "transformer: backward() needs a forward with compute_grad");
  have_grad_state_ = false;
  const int64_t T = batch_ * seq_, D = config_.hidden_size, V = config_.vocab_size;
  const int64_t F = config_.intermediate_size;
  dres_.resize({T, D});
  dn_.resize({T, D});
  dqkv_.resize({T, attn_shape_.qkv_width()});
  dctx_.resize({T, attn_shape_.ctx_width()});

  // logits = n W_head^T:  dW_head += dlogits^T n,  dn = dlogits W_head
  gemm(Trans::Yes, Trans::No, V, D, T, 1.0f, logits_.data(), V, final_n_.data(), D, 1.0f,
       store_.grad(head_).data(), D);
  gemm(Trans::No, Trans::No, T, D, V, 1.0f, logits_.data(), V, store_.value(head_).data(), D, 0.0f,
       dn_.data(), D);
  dres_.fill(0.0f);
  rmsnorm_backward(T, D, final_x_.span(), store_.value(final_norm_), final_rstd_.span(), dn_.span(),
                   dres_.span(), store_.grad(final_norm_));

  for (size_t i = blocks_.size(); i-- > 0;) {
    Block& b = blocks_[i];
    // dres holds dL/dx_{l+1} = dL/d(ffn out) and the residual's share of dL/dh.
    if (b.moe) {
      b.moe->backward(dres_.span(), dn_.span(), true, grad_scale_);
    } else {
      dh13_.resize({T, 2 * F});
      swiglu_backward({T, D, F}, b.n2.span(), store_.value(b.w13), store_.value(b.w2), b.h13.span(),
                      b.act.span(), dres_.span(), dh13_.span(), dn_.span(), store_.grad(b.w13),
                      store_.grad(b.w2), true);
    }
    rmsnorm_backward(T, D, b.h.span(), store_.value(b.ffn_norm), b.rstd2.span(), dn_.span(),
                     dres_.span(), store_.grad(b.ffn_norm));
    // dres now holds dL/dh = dL/d(attention out) and the residual's share of dL/dx_l.
    attention_backward(attn_shape_, rope_, b.n1.span(), store_.value(b.wqkv), store_.value(b.wo),
                       b.qkv.span(), b.ctx.span(), b.lse.span(), dres_.span(), dqkv_.span(),
                       dctx_.span(), dn_.span(), store_.grad(b.wqkv), store_.grad(b.wo),
                       attn_scratch_.span(), qkv_extras(b, true), qkv_extras_grads(b));
    rmsnorm_backward(T, D, b.x.span(), store_.value(b.attn_norm), b.rstd1.span(), dn_.span(),
                     dres_.span(), store_.grad(b.attn_norm));
  }
  embedding_backward(D, tokens_, dres_.span(), store_.grad(embed_));
}

void Transformer::update_expert_bias() {
  for (Block& b : blocks_)
    if (b.moe) b.moe->update_expert_bias();
}

}  // namespace moe
