#include "infer/inference_model.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>

#include "moe/moe_layer.h"
#include "moe/selection.h"
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

const float* InferenceModel::as_f32(const std::string& name, const Shape& shape) {
  const WeightView v = weights_.at(name);
  require_shape(name, v, shape);
  Tensor t(shape, name);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = widen(v, i);
  converted_.push_back(std::move(t));
  return converted_.back().data();
}

// Big matrices stay where they are (fp32 or bf16); fp16 ones, which no kernel here reads,
// are widened to an fp32 copy once.
WeightView InferenceModel::matrix(const std::string& name, const Shape& shape) {
  const WeightView v = weights_.at(name);
  require_shape(name, v, shape);
  if (v.dtype != TensorDtype::F16) return v;
  const float* data = as_f32(name, shape);
  return WeightView{TensorDtype::F32, shape, reinterpret_cast<const std::byte*>(data)};
}

InferenceModel::InferenceModel(const ModelConfig& config, MoeNaming naming,
                               const WeightSource& weights, const InferenceOptions& options)
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
      const bool mixtral = naming == MoeNaming::Mixtral;
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      b.router = as_f32(moe + "gate.weight", {m.num_experts, D});
      if (m.router_type == RouterType::SigmoidBias)
        b.selection_bias = as_f32(moe + "gate.e_score_correction_bias", {m.num_experts});
      if (m.router_type == RouterType::ExpertChoice) {
        const std::string name = moe + "gate.expert_threshold";
        require(weights.find(name).has_value(),
                weights.describe() + ": missing tensor '" + name +
                    "': an expert-choice run written before evaluation routed by learned "
                    "thresholds; resume it (moe train --resume) to estimate them");
        b.threshold = as_f32(name, {m.num_experts});
      }
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
      moe_blocks_.push_back(l);
    }
    blocks_.push_back(std::move(b));
  }
  last_routes_.resize(static_cast<size_t>(moe_layers));
  widest_ffn_ = config.intermediate_size;
  most_routed_ = 1;
  if (config.moe) {
    const MoeConfig& m = *config.moe;
    widest_ffn_ = std::max({widest_ffn_, m.moe_intermediate_size,
                            m.n_shared_experts * m.shared_expert_intermediate_size});
    most_routed_ = m.router_type == RouterType::ExpertChoice ? m.num_experts : m.top_k;
  }
  if (cached)
    cache_ = std::make_unique<ExpertCache>(std::move(cached_experts), options.expert_cache,
                                           options.cache_policy);
}

KvCache InferenceModel::make_cache(int64_t capacity) const {
  require(capacity >= 1 && capacity <= config_.max_position_embeddings,
          "KV cache of " + std::to_string(capacity) + " positions: the model holds 1 to " +
              std::to_string(config_.max_position_embeddings));
  KvCache cache;
  cache.capacity = capacity;
  const int64_t width = attn_.kv_heads * attn_.head_dim;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    cache.keys.emplace_back(Shape{capacity, width}, "key cache");
    cache.values.emplace_back(Shape{capacity, width}, "value cache");
  }
  const bool sequence_routing = config_.moe && config_.moe->routing_level == RoutingLevel::Sequence;
  for (size_t m = 0; m < moe_blocks_.size(); ++m) {
    Tensor& sum = cache.route_sums.emplace_back();
    if (!sequence_routing) continue;
    sum = Tensor({config_.hidden_size}, "routing prefix sum");
    sum.fill(0.0f);
  }
  return cache;
}

const RoutingPlan& InferenceModel::last_routes(int64_t moe_layer) const {
  return last_routes_.at(static_cast<size_t>(moe_layer));
}

void InferenceModel::linear(const WeightView& w, const float* x, int64_t rows, int64_t ldx,
                            float* y, int64_t ldy) {
  const int64_t N = w.shape[0], K = w.shape[1];
  if (w.dtype == TensorDtype::F32)
    gemm(Trans::No, Trans::Yes, rows, N, K, 1.0f, x, ldx, w.f32().data(), K, 0.0f, y, ldy);
  else
    gemm_bf16_weight(rows, N, K, x, ldx, w.bf16().data(), K, y, ldy);
  bytes_read_ += bytes_of(w);
}

void InferenceModel::swiglu(const ExpertWeights& e, const float* x, int64_t rows, float* out) {
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

void InferenceModel::route(const Block& b, const float* r, int64_t rows, RoutingPlan& plan) {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts;
  // Router in fp32: logits [rows, E] in one product, then each token's experts.
  ensure(router_logits_, rows, E);
  gemm(Trans::No, Trans::Yes, rows, E, D, 1.0f, r, D, b.router, D, 0.0f, router_logits_.data(), E);
  bytes_read_ += E * D * static_cast<int64_t>(sizeof(float));
  plan.tokens = rows;
  plan.experts = E;
  plan.top_k = m.top_k;
  plan.token_choice = m.router_type != RouterType::ExpertChoice;
  plan.token.clear();
  plan.expert.clear();
  plan.gate.clear();
  TokenRoute& token = guess_;  // scratch here: prefill runs outside the decode step's region
  for (int64_t t = 0; t < rows; ++t) {
    route_token(b, nullptr, token, router_logits_.data() + t * E);
    plan.token.insert(plan.token.end(), token.picks.size(), static_cast<int32_t>(t));
    plan.expert.insert(plan.expert.end(), token.picks.begin(), token.picks.end());
    plan.gate.insert(plan.gate.end(), token.gates.begin(), token.gates.end());
  }
}

ExpertWeights InferenceModel::expert_weights(const Block& b, int64_t e) {
  if (!cache_) return b.experts[static_cast<size_t>(e)];
  return cache_->get(b.moe_index, e);
}

void InferenceModel::moe_ffn(const Block& b, const float* x, const float* r, int64_t rows,
                             float* out) {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts;
  RoutingPlan& plan = last_routes_[static_cast<size_t>(b.moe_index)];
  route(b, r, rows, plan);
  if (cache_ && options_.prefetch) {
    // Pre-gating: the next MoE layer's router on this layer's input guesses its experts;
    // their reads overlap this layer's expert compute and the next attention.
    const auto next = std::find_if(blocks_.begin() + (&b - blocks_.data()) + 1, blocks_.end(),
                                   [](const Block& c) { return c.moe; });
    if (next != blocks_.end()) {
      RoutingPlan guess;
      route(*next, x, rows, guess);
      cache_->prefetch(next->moe_index, guess.expert);
    }
  }

  // The trainer's dispatcher: rows grouped by expert (an explicit eval_capacity_factor drops
  // over this forward's tokens), each expert's SwiGLU over its rows, then the gated sum.
  dispatcher_.plan(plan, plan.token_choice ? m.capacity(rows, false) : -1, m.drop_policy);
  const int64_t kept = dispatcher_.kept();
  ensure(rows_in_, kept, D);
  ensure(rows_out_, std::max(kept, rows), D);
  dispatcher_.permute({x, size_t(rows * D)}, D, rows_in_.span().subspan(0, size_t(kept * D)));
  const auto offsets = dispatcher_.segment_offsets();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t first = offsets[size_t(e)], n = offsets[size_t(e) + 1] - first;
    if (n > 0)
      swiglu(expert_weights(b, e), rows_in_.data() + first * D, n, rows_out_.data() + first * D);
  }
  dispatcher_.combine(rows_out_.span().subspan(0, size_t(kept * D)), plan.gate, D,
                      {out, size_t(rows * D)});
  if (!b.has_shared) return;
  swiglu(b.shared, x, rows, rows_out_.data());
  for (int64_t t = 0; t < rows; ++t) {
    const float scale = shared_expert_scale(x + t * D, b.shared_gate, D);
    for (int64_t d = 0; d < D; ++d) out[t * D + d] += scale * rows_out_[t * D + d];
  }
  if (b.shared_gate) bytes_read_ += D * static_cast<int64_t>(sizeof(float));
}

const float* InferenceModel::router_input(const Block& b, const float* n, int64_t rows,
                                          KvCache& cache) {
  const MoeConfig& m = *config_.moe;
  if (m.routing_level != RoutingLevel::Sequence) return n;
  // Position p routes on the mean of the inputs at positions 0..min(p, P-1), summed in
  // position order as the training layer's prefix means are.
  const int64_t D = config_.hidden_size, P = m.route_prefix;
  Tensor& sum = cache.route_sums.at(static_cast<size_t>(b.moe_index));
  ensure(route_in_, rows, D);
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t pos = cache.length + t;
    if (pos < P)
      for (int64_t d = 0; d < D; ++d) sum[d] += n[t * D + d];
    const float count = static_cast<float>(std::min(pos, P - 1) + 1);
    for (int64_t d = 0; d < D; ++d) route_in_[t * D + d] = sum[d] / count;
  }
  return route_in_.data();
}

void InferenceModel::prepare_qkv(const Block& b, float* row) const {
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

void InferenceModel::forward(std::span<const int32_t> tokens, KvCache& cache,
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
      moe_ffn(b, n_.data(), router_input(b, n_.data(), T, cache), T, out_.data());
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
void InferenceModel::decode_step(KvCache& cache, std::span<float> logits) {
  const int64_t D = config_.hidden_size, H = attn_.heads, KV = attn_.kv_heads, hd = attn_.head_dim,
                W = attn_.qkv_width(), pos = cache.length, capacity = cache.capacity,
                threads = omp_get_max_threads();
  const bool sequence_routing = config_.moe && config_.moe->routing_level == RoutingLevel::Sequence;
  ensure(n_, threads, D);
  ensure(last_, threads, D);
  ensure(route_in_, threads, D);
  ensure(step_route_n_, std::max<int64_t>(1, static_cast<int64_t>(moe_blocks_.size())), D);
  ensure(gate_act_, most_routed_, widest_ffn_);
  ensure(up_, most_routed_, widest_ffn_);
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
  // `last` (the block's last MLP) x += ffn. Two barriers whatever the count (expert choice may
  // route a token to none: then with `last` only x += ffn, one barrier).
  const auto swiglu_mlps = [&](const ExpertWeights* const* experts, const float* scale,
                               int64_t count, const float* n, bool last) {
    if (failed) return;
    if (count == 0) {
      if (!last) return;
#pragma omp for schedule(static)
      for (int64_t j = 0; j < D; ++j) x[j] += ffn[j];
      return;
    }
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
      // Sequence routing: the prefix mean with this position's input counted, as the
      // prefill's router_input computes it; the cache's sum moves on after the step.
      const float* r = n;
      if (sequence_routing) {
        const Tensor& sum = cache.route_sums[static_cast<size_t>(b.moe_index)];
        const int64_t P = config_.moe->route_prefix;
        const float count = static_cast<float>(std::min(pos, P - 1) + 1);
        float* mean = route_in_.data() + t * D;
        for (int64_t d = 0; d < D; ++d) mean[d] = (pos < P ? sum[d] + n[d] : sum[d]) / count;
        r = mean;
      }
      route_token(b, r, route);
      const int64_t routed = static_cast<int64_t>(route.sorted.size());
#pragma omp masked
      {
        RoutingPlan& plan = last_routes_[static_cast<size_t>(b.moe_index)];
        plan.tokens = 1;
        plan.token.assign(route.picks.size(), 0);
        plan.expert = route.picks;
        plan.gate = route.gates;
        if (sequence_routing) std::copy_n(n, D, step_route_n_.data() + b.moe_index * D);
        bytes_read_ += config_.moe->num_experts * D * static_cast<int64_t>(sizeof(float));
      }
      const int64_t E = config_.moe->num_experts;
      if (!cache_) {
#pragma omp masked
        for (const ExpertWeights* e : route.experts) bytes_read_ += mlp_bytes(*e);
        swiglu_mlps(route.experts.data(), route.sorted_gates.data(), routed, n, !b.has_shared);
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
        if (routed == 0) swiglu_mlps(nullptr, nullptr, 0, n, !b.has_shared);
        for (int64_t j = 0; j < routed; ++j) {
          one_thread([&] { fetched = cache_->get(b.moe_index, route.sorted[size_t(j)]); });
#pragma omp masked
          if (!failed) bytes_read_ += mlp_bytes(fetched);
          const ExpertWeights* expert = &fetched;
          swiglu_mlps(&expert, &route.sorted_gates[size_t(j)], 1, n,
                      j == routed - 1 && !b.has_shared);
        }
      }
      if (b.has_shared) {
        const float scale = shared_expert_scale(n, b.shared_gate, D);
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
  if (sequence_routing && pos < config_.moe->route_prefix)
    for (size_t m = 0; m < moe_blocks_.size(); ++m) {
      Tensor& sum = cache.route_sums[m];
      for (int64_t d = 0; d < D; ++d) sum[d] += step_route_n_[static_cast<int64_t>(m) * D + d];
    }
  cache.length += 1;
}

void InferenceModel::route_token(const Block& b, const float* r, TokenRoute& route,
                                 const float* logits) const {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts, k = m.top_k;
  route.logits.resize(static_cast<size_t>(E));  // sized at the first step, kept after
  route.scores.resize(static_cast<size_t>(E));
  route.selection.resize(static_cast<size_t>(E));
  route.order.resize(static_cast<size_t>(E));
  if (!logits) {
    gemm_few_rows(1, 0, E, D, r, D, b.router, D, route.logits.data(), E);
    logits = route.logits.data();
  }
  router_scores(m, logits, route.scores.data());
  if (b.threshold) {
    experts_over_threshold(m, route.scores.data(), b.threshold, route.picks, route.gates);
  } else {
    route.picks.resize(static_cast<size_t>(k));
    route.gates.resize(static_cast<size_t>(k));
    select_token_experts(m, route.scores.data(), b.selection_bias, route.picks.data(),
                         route.gates.data(), route.selection.data(), route.order.data());
  }
  route.sorted = route.picks;
  route.sorted_gates = route.gates;
  const int64_t count = static_cast<int64_t>(route.sorted.size());
  for (int64_t j = 1; j < count; ++j)  // insertion sort of a few pairs by expert id
    for (int64_t i = j; i > 0 && route.sorted[size_t(i - 1)] > route.sorted[size_t(i)]; --i) {
      std::swap(route.sorted[size_t(i - 1)], route.sorted[size_t(i)]);
      std::swap(route.sorted_gates[size_t(i - 1)], route.sorted_gates[size_t(i)]);
    }
  route.experts.clear();  // mapped experts only: the expert cache hands out its own views
  if (!b.experts.empty())
    for (const int32_t e : route.sorted)
      route.experts.push_back(&b.experts[static_cast<size_t>(e)]);
}

}  // namespace moe
