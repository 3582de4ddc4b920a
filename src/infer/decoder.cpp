#include "infer/decoder.h"

#include <algorithm>
#include <cmath>

#include "moe/router.h"
#include "nn/rmsnorm.h"
#include "nn/swiglu.h"
#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/gemm.h"

namespace moe {
namespace {

std::string shape_text(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void require_shape(const std::string& name, const WeightView& v, const Shape& want) {
  require(v.shape == want,
          "tensor '" + name + "': shape " + shape_text(v.shape) + ", expected " + shape_text(want));
}

float widen(const WeightView& v, int64_t i) {
  const auto at = static_cast<size_t>(i);
  if (v.dtype == TensorDtype::F32) return v.f32()[at];
  return v.dtype == TensorDtype::BF16 ? bf16_to_float(v.bf16()[at]) : half_to_float(v.f16()[at]);
}

int64_t bytes_of(const WeightView& v) {
  return v.numel() * static_cast<int64_t>(dtype_bytes(v.dtype));
}

void ensure(Tensor& t, int64_t rows, int64_t cols) {
  if (t.numel() < rows * cols) t = Tensor({rows, cols});
}

}  // namespace

const float* Decoder::as_f32(const std::string& name, const Shape& shape) {
  const WeightView v = weights_.at(name);
  require_shape(name, v, shape);
  Tensor t(shape, name);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = widen(v, i);
  converted_.push_back(std::move(t));
  return converted_.back().data();
}

// Big matrices stay where they are (fp32 or bf16); fp16 ones, which no kernel here reads,
// are widened to an fp32 copy once.
WeightView Decoder::matrix(const std::string& name, const Shape& shape) {
  const WeightView v = weights_.at(name);
  require_shape(name, v, shape);
  if (v.dtype != TensorDtype::F16) return v;
  const float* data = as_f32(name, shape);
  return WeightView{TensorDtype::F32, shape, reinterpret_cast<const std::byte*>(data)};
}

Decoder::Decoder(const ModelConfig& config, MoeNaming naming, const WeightSource& weights,
                 const DecoderOptions& options)
    : config_(config), weights_(weights), options_(options) {
  const int64_t D = config.hidden_size, V = config.vocab_size, H = config.num_attention_heads,
                KV = config.num_key_value_heads, hd = config.resolved_head_dim(),
                L = config.num_hidden_layers;
  attn_ = AttentionShape{1, 1, D, H, KV, hd};
  rope_ = RopeTable(hd, config.max_position_embeddings, config.rope_theta);
  converted_.reserve(static_cast<size_t>(16 * L + 4));  // keeps the pointers into it stable

  embed_ = matrix("model.embed_tokens.weight", {V, D});
  head_ = config.tie_word_embeddings ? embed_ : matrix("lm_head.weight", {V, D});
  final_norm_ = as_f32("model.norm.weight", {D});
  const auto optional_f32 = [&](const std::string& name, int64_t n) -> const float* {
    return weights.find(name) ? as_f32(name, {n}) : nullptr;
  };
  const auto expert = [&](const std::string& prefix, const char* gate, const char* up,
                          const char* down, int64_t F) {
    return ExpertWeights{matrix(prefix + gate + ".weight", {F, D}),
                         matrix(prefix + up + ".weight", {F, D}),
                         matrix(prefix + down + ".weight", {D, F})};
  };

  // With the expert cache, routed experts are located in their files, not mapped.
  const bool cached = options.expert_cache > 0;
  std::vector<std::vector<ExpertLocation>> cached_experts;
  const auto locate = [&](const std::string& name, const Shape& shape) {
    const auto where = weights.locate(name);
    require(where.has_value(), weights.describe() + ": tensor '" + name +
                                   "' is not in a file: the expert cache reads experts from "
                                   "the checkpoint's files");
    require(where->shape == shape, "tensor '" + name + "': shape " + shape_text(where->shape) +
                                       ", expected " + shape_text(shape));
    require(where->dtype != TensorDtype::F16,
            "tensor '" + name + "': the expert cache reads fp32 or bf16 experts, not F16");
    return *where;
  };

  int64_t moe_layers = 0;
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Block b;
    b.attn_norm = as_f32(p + "input_layernorm.weight", {D});
    b.ffn_norm = as_f32(p + "post_attention_layernorm.weight", {D});
    b.q = matrix(p + "self_attn.q_proj.weight", {H * hd, D});
    b.k = matrix(p + "self_attn.k_proj.weight", {KV * hd, D});
    b.v = matrix(p + "self_attn.v_proj.weight", {KV * hd, D});
    b.o = matrix(p + "self_attn.o_proj.weight", {D, H * hd});
    b.q_bias = optional_f32(p + "self_attn.q_proj.bias", H * hd);
    b.k_bias = optional_f32(p + "self_attn.k_proj.bias", KV * hd);
    b.v_bias = optional_f32(p + "self_attn.v_proj.bias", KV * hd);
    b.q_norm = optional_f32(p + "self_attn.q_norm.weight", H * hd);
    b.k_norm = optional_f32(p + "self_attn.k_norm.weight", KV * hd);
    b.moe = config.moe && config.is_moe_layer(l);
    if (!b.moe) {
      b.dense = expert(p + "mlp.", "gate_proj", "up_proj", "down_proj", config.intermediate_size);
    } else {
      const MoeConfig& m = *config.moe;
      require(m.router_type == RouterType::TopKSoftmax || m.router_type == RouterType::SoftmaxTopK,
              "the decoder runs softmax top-k routers (Mixtral, Qwen2-MoE, OLMoE); this model's "
              "router is another kind");
      const bool mixtral = naming == MoeNaming::Mixtral;
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      b.router = as_f32(moe + "gate.weight", {m.num_experts, D});
      const int64_t F = m.moe_intermediate_size;
      if (cached) cached_experts.emplace_back();
      for (int64_t e = 0; e < m.num_experts; ++e) {
        const std::string ep = moe + "experts." + std::to_string(e) + ".";
        const std::string gate = ep + (mixtral ? "w1" : "gate_proj"),
                          up = ep + (mixtral ? "w3" : "up_proj"),
                          down = ep + (mixtral ? "w2" : "down_proj");
        if (cached)
          cached_experts.back().push_back(ExpertLocation{locate(gate + ".weight", {F, D}),
                                                         locate(up + ".weight", {F, D}),
                                                         locate(down + ".weight", {D, F})});
        else
          b.experts.push_back(ExpertWeights{matrix(gate + ".weight", {F, D}),
                                            matrix(up + ".weight", {F, D}),
                                            matrix(down + ".weight", {D, F})});
      }
      const int64_t shared_width = m.n_shared_experts * m.shared_expert_intermediate_size;
      if (shared_width > 0) {
        b.has_shared = true;
        b.shared = expert(moe + (mixtral ? "shared_experts." : "shared_expert."), "gate_proj",
                          "up_proj", "down_proj", shared_width);
        const std::string gate = moe + "shared_expert_gate.weight";
        if (weights.find(gate)) b.shared_gate = as_f32(gate, {1, D});
      }
      b.moe_index = moe_layers++;
    }
    blocks_.push_back(std::move(b));
  }
  last_experts_.resize(static_cast<size_t>(moe_layers));
  last_gates_.resize(static_cast<size_t>(moe_layers));
  if (cached)
    cache_ = std::make_unique<ExpertCache>(std::move(cached_experts), options.expert_cache,
                                           options.cache_policy);
}

DecoderCache Decoder::make_cache(int64_t capacity) const {
  require(capacity >= 1 && capacity <= config_.max_position_embeddings,
          "KV cache of " + std::to_string(capacity) + " positions: the model holds 1 to " +
              std::to_string(config_.max_position_embeddings));
  DecoderCache cache;
  cache.capacity = capacity;
  const int64_t width = attn_.kv_heads * attn_.head_dim;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    cache.keys.emplace_back(Shape{capacity, width}, "key cache");
    cache.values.emplace_back(Shape{capacity, width}, "value cache");
  }
  return cache;
}

std::span<const int32_t> Decoder::last_experts(int64_t moe_layer) const {
  return last_experts_.at(static_cast<size_t>(moe_layer));
}

std::span<const float> Decoder::last_gates(int64_t moe_layer) const {
  return last_gates_.at(static_cast<size_t>(moe_layer));
}

void Decoder::linear(const WeightView& w, const float* x, int64_t rows, int64_t ldx, float* y,
                     int64_t ldy) {
  const int64_t N = w.shape[0], K = w.shape[1];
  if (w.dtype == TensorDtype::F32)
    gemm(Trans::No, Trans::Yes, rows, N, K, 1.0f, x, ldx, w.f32().data(), K, 0.0f, y, ldy);
  else
    gemm_bf16_weight(rows, N, K, x, ldx, w.bf16().data(), K, y, ldy);
  bytes_read_ += bytes_of(w);
}

void Decoder::swiglu(const ExpertWeights& e, const float* x, int64_t rows, float* out) {
  const int64_t D = config_.hidden_size, F = e.gate.shape[0];
  ensure(gate_act_, rows, F);
  ensure(up_, rows, F);
  linear(e.gate, x, rows, D, gate_act_.data(), F);
  linear(e.up, x, rows, D, up_.data(), F);
  float* g = gate_act_.data();
  const float* u = up_.data();
#pragma omp parallel for schedule(static) if (rows * F >= (int64_t{1} << 16))
  for (int64_t i = 0; i < rows * F; ++i) g[i] = silu(g[i]) * u[i];
  linear(e.down, g, rows, F, out, D);
}

void Decoder::route(const Block& b, const float* x, int64_t rows, std::vector<int32_t>& chosen,
                    std::vector<float>& gates) {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts, k = m.top_k;
  // Router in fp32: logits [rows, E], then each token's k experts and gates.
  ensure(router_logits_, rows, E);
  gemm(Trans::No, Trans::Yes, rows, E, D, 1.0f, x, D, b.router, D, 0.0f, router_logits_.data(), E);
  bytes_read_ += E * D * static_cast<int64_t>(sizeof(float));
  chosen.assign(static_cast<size_t>(rows * k), 0);
  gates.assign(static_cast<size_t>(rows * k), 0.0f);
  std::vector<int32_t> order(static_cast<size_t>(E));
  // Softmax over the k picked logits (Mixtral; or over all E renormalised: the same) or the
  // plain softmax probabilities of the k picked (norm_topk_prob false).
  const bool renormalise = renormalises(m);
  for (int64_t t = 0; t < rows; ++t) {
    const float* logit = router_logits_.data() + t * E;
    int32_t* picks = chosen.data() + t * k;
    top_indices(logit, E, k, order.data(), picks);
    const float top = logit[picks[0]];
    double all = 0, picked = 0;
    for (int64_t e = 0; e < E; ++e) all += std::exp(double(logit[e]) - top);
    for (int64_t j = 0; j < k; ++j) picked += std::exp(double(logit[picks[j]]) - top);
    for (int64_t j = 0; j < k; ++j)
      gates[t * k + j] = static_cast<float>(std::exp(double(logit[picks[j]]) - top) /
                                            (renormalise ? picked : all));
  }
}

ExpertWeights Decoder::expert_weights(const Block& b, int64_t e) {
  if (!cache_) return b.experts[static_cast<size_t>(e)];
  return cache_->get(b.moe_index, e);
}

void Decoder::moe_ffn(const Block& b, const float* x, int64_t rows, float* out) {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts, k = m.top_k;
  std::vector<int32_t>& chosen = last_experts_[static_cast<size_t>(b.moe_index)];
  std::vector<float>& gates = last_gates_[static_cast<size_t>(b.moe_index)];
  route(b, x, rows, chosen, gates);
  if (cache_ && options_.prefetch) {
    // Pre-gating: the next MoE layer's router on this layer's input guesses its experts;
    // their reads overlap this layer's expert compute and the next attention.
    const auto next = std::find_if(blocks_.begin() + (&b - blocks_.data()) + 1, blocks_.end(),
                                   [](const Block& c) { return c.moe; });
    if (next != blocks_.end()) {
      std::vector<int32_t> guess;
      std::vector<float> unused;
      route(*next, x, rows, guess, unused);
      cache_->prefetch(next->moe_index, guess);
    }
  }

  // Experts over the tokens that chose them: gather, SwiGLU, scatter-add weighted by gate.
  std::fill(out, out + rows * D, 0.0f);
  ensure(rows_in_, rows, D);
  ensure(rows_out_, rows, D);
  std::vector<int64_t> slots;
  for (int64_t e = 0; e < E; ++e) {
    slots.clear();
    for (int64_t s = 0; s < rows * k; ++s)
      if (chosen[s] == e) slots.push_back(s);
    if (slots.empty()) continue;
    const int64_t n = static_cast<int64_t>(slots.size());
    for (int64_t i = 0; i < n; ++i) std::copy_n(x + slots[i] / k * D, D, rows_in_.data() + i * D);
    swiglu(expert_weights(b, e), rows_in_.data(), n, rows_out_.data());
    for (int64_t i = 0; i < n; ++i) {
      float* dst = out + slots[i] / k * D;
      const float* src = rows_out_.data() + i * D;
      const float g = gates[slots[i]];
      for (int64_t d = 0; d < D; ++d) dst[d] += g * src[d];
    }
  }
  if (!b.has_shared) return;
  swiglu(b.shared, x, rows, rows_out_.data());
  for (int64_t t = 0; t < rows; ++t) {
    float scale = 1.0f;
    if (b.shared_gate) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += double(x[t * D + d]) * b.shared_gate[d];
      scale = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
    }
    for (int64_t d = 0; d < D; ++d) out[t * D + d] += scale * rows_out_[t * D + d];
  }
  if (b.shared_gate) bytes_read_ += D * static_cast<int64_t>(sizeof(float));
}

void Decoder::forward(std::span<const int32_t> tokens, DecoderCache& cache,
                      std::span<float> logits) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t D = config_.hidden_size, V = config_.vocab_size, H = attn_.heads,
                KV = attn_.kv_heads, hd = attn_.head_dim, W = attn_.qkv_width();
  require(T >= 1, "forward needs at least one token");
  require(static_cast<int64_t>(logits.size()) == V, "logits must hold vocab_size values");
  require(cache.length + T <= cache.capacity,
          "the KV cache holds " + std::to_string(cache.capacity) + " positions: " +
              std::to_string(cache.length) + " used, " + std::to_string(T) + " more asked");
  for (const int32_t id : tokens)
    require(id >= 0 && id < V, "token id " + std::to_string(id) +
                                   " is outside the vocabulary [0, " + std::to_string(V) + ")");
  bytes_read_ = 0;
  ensure(x_, T, D);
  ensure(n_, T, D);
  ensure(out_, T, D);
  ensure(qkv_, T, W);
  ensure(ctx_, T, H * hd);
  ensure(rstd_, T, 1);
  ensure(scores_, cache.capacity, 1);

  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) x_[t * D + d] = widen(embed_, int64_t{tokens[t]} * D + d);
  bytes_read_ += T * D * static_cast<int64_t>(dtype_bytes(embed_.dtype));

  const auto rows = [](Tensor& t, int64_t n, int64_t width) {
    return t.span().subspan(0, static_cast<size_t>(n * width));
  };
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const Block& b = blocks_[l];
    rmsnorm_forward(T, D, config_.rms_norm_eps, rows(x_, T, D), {b.attn_norm, size_t(D)},
                    rows(n_, T, D), rows(rstd_, T, 1));
    float* qkv = qkv_.data();
    linear(b.q, n_.data(), T, D, qkv, W);
    linear(b.k, n_.data(), T, D, qkv + H * hd, W);
    linear(b.v, n_.data(), T, D, qkv + (H + KV) * hd, W);
    for (int64_t t = 0; t < T; ++t) {
      float* row = qkv + t * W;
      const auto add_bias = [](float* v, const float* bias, int64_t n) {
        if (bias)
          for (int64_t i = 0; i < n; ++i) v[i] += bias[i];
      };
      add_bias(row, b.q_bias, H * hd);
      add_bias(row + H * hd, b.k_bias, KV * hd);
      add_bias(row + (H + KV) * hd, b.v_bias, KV * hd);
      // OLMoE: one RMSNorm over the whole q (and k) projection, before RoPE.
      float unused_rstd;
      if (b.q_norm)
        rmsnorm_forward(1, H * hd, config_.rms_norm_eps, {row, size_t(H * hd)},
                        {b.q_norm, size_t(H * hd)}, {row, size_t(H * hd)}, {&unused_rstd, 1});
      if (b.k_norm)
        rmsnorm_forward(1, KV * hd, config_.rms_norm_eps, {row + H * hd, size_t(KV * hd)},
                        {b.k_norm, size_t(KV * hd)}, {row + H * hd, size_t(KV * hd)},
                        {&unused_rstd, 1});
      if (config_.clip_qkv > 0.0f)  // OLMoE: q, k and v clamped after the norms
        for (int64_t i = 0; i < W; ++i)
          row[i] = std::clamp(row[i], -config_.clip_qkv, config_.clip_qkv);
      const int64_t pos = cache.length + t;
      attention_decode(attn_, rope_, pos, {row, size_t(W)}, cache.keys[l].span(),
                       cache.values[l].span(), scores_.span().subspan(0, size_t(pos + 1)),
                       ctx_.span().subspan(size_t(t * H * hd), size_t(H * hd)));
    }
    linear(b.o, ctx_.data(), T, H * hd, out_.data(), D);
    for (int64_t i = 0; i < T * D; ++i) x_[i] += out_[i];

    rmsnorm_forward(T, D, config_.rms_norm_eps, rows(x_, T, D), {b.ffn_norm, size_t(D)},
                    rows(n_, T, D), rows(rstd_, T, 1));
    if (b.moe)
      moe_ffn(b, n_.data(), T, out_.data());
    else
      swiglu(b.dense, n_.data(), T, out_.data());
    for (int64_t i = 0; i < T * D; ++i) x_[i] += out_[i];
  }
  cache.length += T;

  // Only the last position's logits are wanted: one row through the final norm and head.
  ensure(last_, 1, D);
  float unused_rstd;
  rmsnorm_forward(1, D, config_.rms_norm_eps, x_.span().subspan(size_t((T - 1) * D), size_t(D)),
                  {final_norm_, size_t(D)}, last_.span().subspan(0, size_t(D)), {&unused_rstd, 1});
  linear(head_, last_.data(), 1, D, logits.data(), V);
}

}  // namespace moe
