#include "infer/decoder.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>

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

// y[j0:j1] = w[j0:j1, :] · x for one token, on the calling thread.
void weight_rows(const WeightView& w, const float* x, int64_t j0, int64_t j1, float* y) {
  const int64_t K = w.shape[1];
  if (w.dtype == TensorDtype::F32)
    gemm_few_rows(1, j0, j1, K, x, K, w.f32().data(), K, y, w.shape[0]);
  else
    gemm_few_rows(1, j0, j1, K, x, K, w.bf16().data(), K, y, w.shape[0]);
}

// The smallest share of a product's rows a thread takes at once in the decode step (guided
// schedule: the first grabs are large, the last ones this small), in bytes of weight: small
// enough that the threads finish a product together, large enough that taking a share costs
// nothing beside streaming it.
constexpr int64_t kShareBytes = 16 * 1024;

int64_t share_rows(const WeightView& w) {
  const int64_t row_bytes = w.shape[1] * static_cast<int64_t>(dtype_bytes(w.dtype));
  return std::max<int64_t>(1, kShareBytes / std::max<int64_t>(row_bytes, 1));
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
  widest_ffn_ = config.intermediate_size;
  if (config.moe) {
    const MoeConfig& m = *config.moe;
    widest_ffn_ = std::max({widest_ffn_, m.moe_intermediate_size,
                            m.n_shared_experts * m.shared_expert_intermediate_size});
  }
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
#pragma omp parallel for schedule(static) if (rows >= 2 && rows * F >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) silu_gate(g + r * F, g + r * F, u + r * F, F);
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
  for (int64_t t = 0; t < rows; ++t)
    pick_experts(router_logits_.data() + t * E, chosen.data() + t * k, gates.data() + t * k,
                 order.data());
}

void Decoder::pick_experts(const float* logit, int32_t* picks, float* gates, int32_t* order) const {
  const MoeConfig& m = *config_.moe;
  const int64_t E = m.num_experts, k = m.top_k;
  top_indices(logit, E, k, order, picks);
  // Softmax over the k picked logits (Mixtral; or over all E renormalised: the same) or the
  // plain softmax probabilities of the k picked (norm_topk_prob false).
  const float top = logit[picks[0]];
  double all = 0, picked = 0;
  for (int64_t e = 0; e < E; ++e) all += std::exp(double(logit[e]) - top);
  for (int64_t j = 0; j < k; ++j) picked += std::exp(double(logit[picks[j]]) - top);
  for (int64_t j = 0; j < k; ++j)
    gates[j] = static_cast<float>(std::exp(double(logit[picks[j]]) - top) /
                                  (renormalises(m) ? picked : all));
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
    const float scale = shared_expert_scale(b, x + t * D);
    for (int64_t d = 0; d < D; ++d) out[t * D + d] += scale * rows_out_[t * D + d];
  }
  if (b.shared_gate) bytes_read_ += D * static_cast<int64_t>(sizeof(float));
}

float Decoder::shared_expert_scale(const Block& b, const float* x) const {
  if (!b.shared_gate) return 1.0f;
  double dot = 0;
  for (int64_t d = 0; d < config_.hidden_size; ++d) dot += double(x[d]) * b.shared_gate[d];
  return static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
}

void Decoder::prepare_qkv(const Block& b, float* row) const {
  const int64_t H = attn_.heads, KV = attn_.kv_heads, hd = attn_.head_dim, W = attn_.qkv_width();
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
  if (T == 1) return decode_step(cache, logits);

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
      prepare_qkv(b, row);
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

// A decode step reads about 40 MB of weights per layer through some twenty products of one
// row; forking and joining the threads for each (as gemm does) and running the small parts
// between them on one thread while the other idles cost a share of the step. So the whole step
// is one parallel region: every product's output rows are shared among the threads (guided:
// large shares first, small ones last, so a thread that falls behind, preempted on a shared
// machine, leaves its rows to the others), and the threads meet at a barrier only where the
// next product needs the whole previous output. The small parts that every product needs
// whole (the norms, the router and top-k, the shared expert's gate) each thread computes
// itself, the same bits on each; RoPE and the KV cache run on one thread, attention splits by
// head. Each output is one thread's sum through the few-row kernel that gemm runs for one
// row, so the logits are the same to the bit whatever the thread count, and the same as when
// every product was its own parallel call.
//
//   per block:  each thread: n = RMSNorm(x)
//               q, k, v rows of n                                  | barrier
//               [one thread] biases, q/k norms, RoPE, KV cache      | barrier
//               attention, heads shared                            | barrier
//               o rows of ctx, x += them                           | barrier
//               each thread: n = RMSNorm(x), router, top-k (or a dense block's MLP)
//               gate and up rows of n, h = silu(gate) * up, all k experts   | barrier
//               down rows: ffn += gate_e * (h_e down_e^T), ascending e, x += ffn | barrier
//               (expert cache: one expert at a time, read by one thread first; a shared
//               expert after the routed ones)
//   then:       each thread: final norm;  LM head rows -> logits
void Decoder::decode_step(DecoderCache& cache, std::span<float> logits) {
  const int64_t D = config_.hidden_size, H = attn_.heads, KV = attn_.kv_heads, hd = attn_.head_dim,
                W = attn_.qkv_width(), pos = cache.length, capacity = cache.capacity,
                threads = omp_get_max_threads(), k = config_.moe ? config_.moe->top_k : 1;
  ensure(n_, threads, D);
  ensure(last_, threads, D);
  ensure(gate_act_, k, widest_ffn_);
  ensure(up_, k, widest_ffn_);
  ensure(rows_out_, 1, D);
  ensure(scores_, threads, capacity);
  if (static_cast<int64_t>(routes_.size()) < threads) routes_.resize(static_cast<size_t>(threads));
  float *x = x_.data(), *qkv = qkv_.data(), *ctx = ctx_.data(), *ffn = out_.data(),
        *y = rows_out_.data();

  // An error on the one thread (an expert read that fails) is kept for after the region; from
  // then on every thread still meets every barrier but skips the experts. `failed` only
  // changes inside a single, so all threads read the same value after its barrier.
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const auto one_thread = [&](auto&& work) {
#pragma omp single
    if (!failed) {
      try {
        work();
      } catch (...) {
        error = std::current_exception();
        failed = true;
      }
    }
  };
  // out[j] = w[j, :] · v for every row j of w, the rows shared among the threads; then
  // epilogue(j0, j1) on the rows this thread made. No barrier at the end: the caller places it.
  const auto rows_of = [&](const WeightView& w, const float* v, float* out, auto&& epilogue) {
    const int64_t N = w.shape[0], step = share_rows(w), shares = (N + step - 1) / step;
#pragma omp for schedule(guided) nowait
    for (int64_t i = 0; i < shares; ++i) {
      const int64_t j0 = i * step, j1 = std::min(N, j0 + step);
      weight_rows(w, v, j0, j1, out);
      epilogue(j0, j1);
    }
  };
  const auto nothing = [](int64_t, int64_t) {};
  // SwiGLU MLPs of the token's n, experts[i] weighted by scale[i]: h_i = silu(n gate_i^T) *
  // (n up_i^T), then ffn += scale_i (h_i down_i^T) row by row in the order given, and with
  // `last` (the block's last MLP) x += ffn. Two barriers whatever the count.
  const auto swiglu_mlps = [&](const ExpertWeights* const* experts, const float* scale,
                               int64_t count, const float* n, bool last) {
    if (failed) return;
    const int64_t F = experts[0]->gate.shape[0], step = share_rows(experts[0]->gate),
                  shares = (F + step - 1) / step;
#pragma omp for schedule(guided)
    for (int64_t i = 0; i < count * shares; ++i) {
      const ExpertWeights& e = *experts[i / shares];
      const int64_t j0 = i % shares * step, j1 = std::min(F, j0 + step);
      float *h = gate_act_.data() + i / shares * widest_ffn_,
            *u = up_.data() + i / shares * widest_ffn_;
      weight_rows(e.gate, n, j0, j1, h);
      weight_rows(e.up, n, j0, j1, u);
      silu_gate(h + j0, h + j0, u + j0, j1 - j0);
    }
    const int64_t down_step = share_rows(experts[0]->down),
                  down_shares = (D + down_step - 1) / down_step;
#pragma omp for schedule(guided)
    for (int64_t i = 0; i < down_shares; ++i) {
      const int64_t j0 = i * down_step, j1 = std::min(D, j0 + down_step);
      for (int64_t e = 0; e < count; ++e) {
        weight_rows(experts[e]->down, gate_act_.data() + e * widest_ffn_, j0, j1, y);
        for (int64_t j = j0; j < j1; ++j) ffn[j] += scale[e] * y[j];
      }
      if (last)
        for (int64_t j = j0; j < j1; ++j) x[j] += ffn[j];
    }
  };
  const auto norm = [&](const float* weight, float* to) {
    float unused_rstd;
    rmsnorm_forward(1, D, config_.rms_norm_eps, {x, size_t(D)}, {weight, size_t(D)},
                    {to, size_t(D)}, {&unused_rstd, 1});
  };
  const auto mlp_bytes = [](const ExpertWeights& e) {
    return bytes_of(e.gate) + bytes_of(e.up) + bytes_of(e.down);
  };
  ExpertWeights fetched;  // an expert from the expert cache

#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num();
    float* n = n_.data() + t * D;
    float* scores = scores_.data() + t * capacity;
    TokenRoute& route = routes_[static_cast<size_t>(t)];
    for (size_t l = 0; l < blocks_.size(); ++l) {
      const Block& b = blocks_[l];
      norm(b.attn_norm, n);
#pragma omp masked
      bytes_read_ += bytes_of(b.q) + bytes_of(b.k) + bytes_of(b.v) + bytes_of(b.o);
      rows_of(b.q, n, qkv, nothing);
      rows_of(b.k, n, qkv + H * hd, nothing);
      rows_of(b.v, n, qkv + (H + KV) * hd, nothing);
#pragma omp barrier
      one_thread([&] {
        prepare_qkv(b, qkv);
        attention_decode_append(attn_, rope_, pos, {qkv, size_t(W)}, cache.keys[l].span(),
                                cache.values[l].span());
      });
#pragma omp for schedule(dynamic)
      for (int64_t head = 0; head < H; ++head)
        attention_decode_heads(attn_, pos, head, head + 1, {qkv, size_t(W)}, cache.keys[l].span(),
                               cache.values[l].span(), {scores, size_t(pos + 1)},
                               {ctx, size_t(H * hd)});
      rows_of(b.o, ctx, y, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          x[j] += y[j];
          ffn[j] = 0.0f;  // the FFN's sum starts here, for the same rows
        }
      });
#pragma omp barrier

      norm(b.ffn_norm, n);
      if (!b.moe) {
        const ExpertWeights* dense = &b.dense;
        const float one = 1.0f;
#pragma omp masked
        bytes_read_ += mlp_bytes(b.dense);
        swiglu_mlps(&dense, &one, 1, n, true);
        continue;
      }
      route_token(b, n, route);
#pragma omp masked
      {
        last_experts_[static_cast<size_t>(b.moe_index)] = route.picks;
        last_gates_[static_cast<size_t>(b.moe_index)] = route.gates;
        bytes_read_ += config_.moe->num_experts * D * static_cast<int64_t>(sizeof(float));
      }
      const int64_t E = config_.moe->num_experts;
      if (!cache_) {
#pragma omp masked
        for (const ExpertWeights* e : route.experts) bytes_read_ += mlp_bytes(*e);
        swiglu_mlps(route.experts.data(), route.sorted_gates.data(), k, n, !b.has_shared);
      } else {
        // Pre-gating, as in moe_ffn: the next MoE layer's router on this layer's input starts
        // the reads of its likely experts. Then this layer's experts one at a time: a cache
        // slot's view holds until the next read of the layer.
        const auto next = std::find_if(blocks_.begin() + static_cast<std::ptrdiff_t>(l) + 1,
                                       blocks_.end(), [](const Block& c) { return c.moe; });
        if (options_.prefetch && next != blocks_.end()) {
          one_thread([&] {
            route_token(*next, n, guess_);
            cache_->prefetch(next->moe_index, guess_.picks);
          });
#pragma omp masked
          bytes_read_ += E * D * static_cast<int64_t>(sizeof(float));
        }
        for (int64_t j = 0; j < k; ++j) {
          one_thread([&] { fetched = cache_->get(b.moe_index, route.sorted[size_t(j)]); });
#pragma omp masked
          if (!failed) bytes_read_ += mlp_bytes(fetched);
          const ExpertWeights* expert = &fetched;
          swiglu_mlps(&expert, &route.sorted_gates[size_t(j)], 1, n, j == k - 1 && !b.has_shared);
        }
      }
      if (b.has_shared) {
        const float scale = shared_expert_scale(b, n);
#pragma omp masked
        bytes_read_ += mlp_bytes(b.shared) + (b.shared_gate ? D * int64_t{sizeof(float)} : 0);
        const ExpertWeights* shared = &b.shared;
        swiglu_mlps(&shared, &scale, 1, n, true);
      }
    }
    float* last = last_.data() + t * D;
    norm(final_norm_, last);
#pragma omp masked
    bytes_read_ += bytes_of(head_);
    if (!failed) rows_of(head_, last, logits.data(), nothing);
  }
  if (error) std::rethrow_exception(error);
  cache.length += 1;
}

void Decoder::route_token(const Block& b, const float* n, TokenRoute& r) const {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts, k = m.top_k;
  r.logits.resize(static_cast<size_t>(E));  // sized at the first step, kept after
  r.order.resize(static_cast<size_t>(E));
  r.picks.resize(static_cast<size_t>(k));
  r.gates.resize(static_cast<size_t>(k));
  gemm_few_rows(1, 0, E, D, n, D, b.router, D, r.logits.data(), E);
  pick_experts(r.logits.data(), r.picks.data(), r.gates.data(), r.order.data());
  r.sorted = r.picks;
  r.sorted_gates = r.gates;
  for (int64_t j = 1; j < k; ++j)  // insertion sort of k pairs by expert id
    for (int64_t i = j; i > 0 && r.sorted[size_t(i - 1)] > r.sorted[size_t(i)]; --i) {
      std::swap(r.sorted[size_t(i - 1)], r.sorted[size_t(i)]);
      std::swap(r.sorted_gates[size_t(i - 1)], r.sorted_gates[size_t(i)]);
    }
  r.experts.clear();  // mapped experts only: the expert cache hands out its own views
  if (!b.experts.empty())
    for (const int32_t e : r.sorted) r.experts.push_back(&b.experts[static_cast<size_t>(e)]);
}

}  // namespace moe
