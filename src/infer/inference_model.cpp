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
#include "tensor/quant.h"

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

}  // namespace

const float* InferenceModel::as_f32(const std::string& name, const Shape& shape) {
  const WeightView v = weights_.at(name);
  require_shape(name, v, shape);
  Tensor t(shape, name);
  const int64_t cols = shape.empty() ? 1 : shape.back();
  for (int64_t r = 0; r < t.numel() / cols; ++r)
    widen_row(v, r, t.span().subspan(size_t(r * cols), size_t(cols)));
  converted_.push_back(std::move(t));
  return converted_.back().data();
}

// Big matrices stay where they are (fp32, bf16 or ggml's blocks); fp16 ones, which no kernel
// here reads, are widened to an fp32 copy once.
WeightView InferenceModel::matrix(const std::string& name, const Shape& shape) {
  const WeightView v = weights_.at(name);
  require_shape(name, v, shape);
  if (v.quant || v.dtype != TensorDtype::F16) return v;
  const float* data = as_f32(name, shape);
  return WeightView{TensorDtype::F32, shape, reinterpret_cast<const std::byte*>(data),
                    std::nullopt};
}

InferenceModel::InferenceModel(const ModelConfig& config, HfArch arch, const WeightSource& weights,
                               const InferenceOptions& options)
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
  // With the expert cache, routed experts are located in their files, not mapped.
  std::vector<std::vector<ExpertLocation>> cached_experts;
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Block b;
    bind_attention(b, p);
    b.ffn_norm = as_f32(p + "post_attention_layernorm.weight", {D});
    b.moe = config.moe && config.is_moe_layer(l);
    if (b.moe) {
      b.moe_index = static_cast<int64_t>(moe_blocks_.size());
      moe_blocks_.push_back(l);
      bind_moe(b, arch, l, cached_experts);
    } else {
      b.dense = mlp(p + "mlp.", config.intermediate_size);
    }
    blocks_.push_back(std::move(b));
  }
  last_routes_.resize(moe_blocks_.size());
  widest_ffn_ = config.intermediate_size;
  most_routed_ = 1;
  if (config.moe) {
    const MoeConfig& m = *config.moe;
    widest_ffn_ = std::max({widest_ffn_, m.moe_intermediate_size,
                            m.n_shared_experts * m.shared_expert_intermediate_size});
    most_routed_ = m.router_type == RouterType::ExpertChoice ? m.num_experts : m.top_k;
  }
  if (options.expert_cache > 0)
    cache_ = std::make_unique<ExpertCache>(std::move(cached_experts), options.expert_cache,
                                           options.cache_policy);
}

const float* InferenceModel::optional_f32(const std::string& name, int64_t n) {
  return weights_.find(name) ? as_f32(name, {n}) : nullptr;
}

ExpertWeights InferenceModel::mlp(const std::string& prefix, int64_t F) {
  const int64_t D = config_.hidden_size;
  return ExpertWeights{matrix(prefix + "gate_proj.weight", {F, D}),
                       matrix(prefix + "up_proj.weight", {F, D}),
                       matrix(prefix + "down_proj.weight", {D, F})};
}

void InferenceModel::bind_attention(Block& b, const std::string& p) {
  const int64_t D = config_.hidden_size, H = attn_.heads, KV = attn_.kv_heads, hd = attn_.head_dim;
  b.attn_norm = as_f32(p + "input_layernorm.weight", {D});
  b.q = matrix(p + "self_attn.q_proj.weight", {H * hd, D});
  b.k = matrix(p + "self_attn.k_proj.weight", {KV * hd, D});
  b.v = matrix(p + "self_attn.v_proj.weight", {KV * hd, D});
  b.o = matrix(p + "self_attn.o_proj.weight", {D, H * hd});
  // The extras as the training attention takes them: one bias over the stacked q, k, v rows
  // (zeros for a projection without one), the q/k norms, the clamp.
  const float* q_bias = optional_f32(p + "self_attn.q_proj.bias", H * hd);
  const float* k_bias = optional_f32(p + "self_attn.k_proj.bias", KV * hd);
  const float* v_bias = optional_f32(p + "self_attn.v_proj.bias", KV * hd);
  if (q_bias || k_bias || v_bias) {
    Tensor bias({attn_.qkv_width()}, p + "qkv bias");
    bias.fill(0.0f);
    if (q_bias) std::copy_n(q_bias, H * hd, bias.data());
    if (k_bias) std::copy_n(k_bias, KV * hd, bias.data() + H * hd);
    if (v_bias) std::copy_n(v_bias, KV * hd, bias.data() + (H + KV) * hd);
    converted_.push_back(std::move(bias));
    b.extras.bias = converted_.back().span();
  }
  const float* q_norm = optional_f32(p + "self_attn.q_norm.weight", H * hd);
  const float* k_norm = optional_f32(p + "self_attn.k_norm.weight", KV * hd);
  require(!q_norm == !k_norm, p + "self_attn: a q norm needs a k norm, and the other way round");
  if (q_norm) {
    b.extras.q_norm = {q_norm, size_t(H * hd)};
    b.extras.k_norm = {k_norm, size_t(KV * hd)};
  }
  b.extras.norm_eps = config_.rms_norm_eps;
  b.extras.clip = config_.clip_qkv;
}

void InferenceModel::bind_moe(Block& b, HfArch arch, int64_t layer,
                              std::vector<std::vector<ExpertLocation>>& cached_experts) {
  const MoeConfig& m = *config_.moe;
  const int64_t D = config_.hidden_size, E = m.num_experts, F = m.moe_intermediate_size;
  const std::string moe = moe_block_prefix(arch, layer);
  b.router = as_f32(moe + "gate.weight", {E, D});
  if (m.router_type == RouterType::SigmoidBias)
    b.selection_bias = as_f32(moe + "gate.e_score_correction_bias", {E});
  if (m.router_type == RouterType::ExpertChoice) {
    const std::string name = moe + "gate.expert_threshold";
    require(weights_.find(name).has_value(),
            weights_.describe() + ": missing tensor '" + name +
                "': an expert-choice run written before evaluation routed by learned "
                "thresholds; resume it (moe train --resume) to estimate them");
    b.threshold = as_f32(name, {E});
  }
  const bool cached = options_.expert_cache > 0;
  if (cached) cached_experts.emplace_back();
  for (int64_t e = 0; e < E; ++e) {
    const std::string gate = expert_tensor_name(arch, layer, e, ExpertMatrix::Gate),
                      up = expert_tensor_name(arch, layer, e, ExpertMatrix::Up),
                      down = expert_tensor_name(arch, layer, e, ExpertMatrix::Down);
    if (cached)
      cached_experts.back().push_back(
          ExpertLocation{locate(gate, {F, D}), locate(up, {F, D}), locate(down, {D, F})});
    else
      b.experts.push_back(
          ExpertWeights{matrix(gate, {F, D}), matrix(up, {F, D}), matrix(down, {D, F})});
  }
  // The decode step quantizes a token's input once for all of a layer's experts.
  for (const ExpertWeights& e : b.experts) {
    const ExpertWeights& first = b.experts.front();
    require(e.gate.type_name() == first.gate.type_name() &&
                e.up.type_name() == first.up.type_name() &&
                e.down.type_name() == first.down.type_name(),
            moe + "experts: the experts of one layer must share each matrix's type");
  }
  const int64_t shared_width = m.n_shared_experts * m.shared_expert_intermediate_size;
  if (shared_width == 0) return;
  b.has_shared = true;
  b.shared = mlp(moe + std::string(moe_tensor_names(arch).shared), shared_width);
  const std::string gate = moe + "shared_expert_gate.weight";
  if (weights_.find(gate)) b.shared_gate = as_f32(gate, {1, D});
}

// A routed expert's tensor where it lies in its file, for the expert cache to read.
TensorLocation InferenceModel::locate(const std::string& name, const Shape& shape) const {
  const auto where = weights_.locate(name);
  require(where.has_value(), weights_.describe() + ": tensor '" + name +
                                 "' is not in a file: the expert cache reads experts from "
                                 "the checkpoint's files");
  require(where->shape == shape, "tensor '" + name + "': shape " + shape_text(where->shape) +
                                     ", expected " + shape_text(shape));
  require(where->quant || where->dtype != TensorDtype::F16,
          "tensor '" + name + "': the expert cache reads fp32, bf16 or quantized experts, not F16");
  return *where;
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
  if (w.quant)
    quantized_matmul(*w.quant, w.blocks(), N, K, x, rows, ldx, y, ldy);
  else if (w.dtype == TensorDtype::F32)
    gemm(Trans::No, Trans::Yes, rows, N, K, 1.0f, x, ldx, w.f32().data(), K, 0.0f, y, ldy);
  else
    gemm_bf16_weight(rows, N, K, x, ldx, w.bf16().data(), K, y, ldy);
  bytes_read_ += w.bytes();
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
  if (dump_) dump_routes(b, plan);
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

void InferenceModel::dump_routes(const Block& b, const RoutingPlan& plan) {
  const std::string blk = "blk." + std::to_string(&b - blocks_.data()) + ".moe.";
  dump_->keep(blk + "router_logits", router_logits_.data(), plan.tokens, plan.experts);
  if (!plan.token_choice) return;  // expert choice: no fixed number of experts per token
  std::vector<float> experts(plan.expert.begin(), plan.expert.end());
  dump_->keep(blk + "experts", experts.data(), plan.tokens, plan.top_k);
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

void IntermediateDump::keep(const std::string& name, const float* data, int64_t rows,
                            int64_t cols) {
  if (!wants(name)) return;
  Tensor t({rows, cols});
  std::copy(data, data + rows * cols, t.data());
  tensors.insert_or_assign(name, std::move(t));
}

// Checks the tokens and the cache's room, sizes the scratch for T tokens and writes their
// embeddings into x_.
void InferenceModel::embed_tokens(std::span<const int32_t> tokens, KvCache& cache) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t D = config_.hidden_size, V = config_.vocab_size, H = attn_.heads,
                hd = attn_.head_dim, W = attn_.qkv_width();
  require(T >= 1, "forward needs at least one token");
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
    widen_row(embed_, tokens[size_t(t)], x_.span().subspan(size_t(t * D), size_t(D)));
  bytes_read_ += T * (embed_.bytes() / V);
}

void InferenceModel::forward(std::span<const int32_t> tokens, KvCache& cache,
                             std::span<float> logits) {
  const int64_t T = static_cast<int64_t>(tokens.size()), D = config_.hidden_size,
                V = config_.vocab_size;
  require(static_cast<int64_t>(logits.size()) == V, "logits must hold vocab_size values");
  embed_tokens(tokens, cache);
  if (T == 1 && !dump_) return decode_step(cache, logits);
  run_blocks(T, cache);
  // Only the last position's logits are wanted: one row through the final norm and head.
  ensure(last_, 1, D);
  float unused_rstd;
  rmsnorm_forward(1, D, config_.rms_norm_eps, x_.span().subspan(size_t((T - 1) * D), size_t(D)),
                  {final_norm_, size_t(D)}, last_.span().subspan(0, size_t(D)), {&unused_rstd, 1});
  linear(head_, last_.data(), 1, D, logits.data(), V);
}

void InferenceModel::forward_all(std::span<const int32_t> tokens, KvCache& cache,
                                 std::span<float> logits) {
  const int64_t T = static_cast<int64_t>(tokens.size()), D = config_.hidden_size,
                V = config_.vocab_size;
  require(static_cast<int64_t>(logits.size()) == T * V,
          "logits must hold vocab_size values for each token");
  embed_tokens(tokens, cache);
  run_blocks(T, cache);
  rmsnorm_forward(T, D, config_.rms_norm_eps, x_.span().subspan(0, size_t(T * D)),
                  {final_norm_, size_t(D)}, n_.span().subspan(0, size_t(T * D)),
                  rstd_.span().subspan(0, size_t(T)));
  linear(head_, n_.data(), T, D, logits.data(), V);
}

// The T tokens embedded in x_ through every block, at positions cache.length...; their keys
// and values appended to the cache.
void InferenceModel::run_blocks(int64_t T, KvCache& cache) {
  const int64_t D = config_.hidden_size, H = attn_.heads, KV = attn_.kv_heads, hd = attn_.head_dim,
                W = attn_.qkv_width();
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
    apply_qkv_extras(attn_, T, b.extras, qkv_.span().subspan(0, size_t(T * W)));
    for (int64_t t = 0; t < T; ++t) {
      float* row = qkv + t * W;
      const int64_t pos = cache.length + t;
      attention_decode(attn_, rope_, pos, {row, size_t(W)}, cache.keys[l].span(),
                       cache.values[l].span(), scores_.span().subspan(0, size_t(pos + 1)),
                       ctx_.span().subspan(size_t(t * H * hd), size_t(H * hd)));
    }
    linear(b.o, ctx_.data(), T, H * hd, out_.data(), D);
    const std::string blk = "blk." + std::to_string(l) + ".";
    if (dump_) dump_->keep(blk + "attn_out", out_.data(), T, D);
    for (int64_t i = 0; i < T * D; ++i) x_[i] += out_[i];

    rmsnorm_forward(T, D, config_.rms_norm_eps, rows(x_, T, D), {b.ffn_norm, size_t(D)},
                    rows(n_, T, D), rows(rstd_, T, 1));
    if (b.moe)
      moe_ffn(b, n_.data(), router_input(b, n_.data(), T, cache), T, out_.data());
    else
      swiglu(b.dense, n_.data(), T, out_.data());
    if (dump_) dump_->keep(blk + "ffn_out", out_.data(), T, D);
    for (int64_t i = 0; i < T * D; ++i) x_[i] += out_[i];
  }
  cache.length += T;
  if (dump_ && dump_->wants("norm_out")) {
    Tensor normed({T, D}), rstd({T, 1});
    rmsnorm_forward(T, D, config_.rms_norm_eps, rows(x_, T, D), {final_norm_, size_t(D)},
                    normed.span(), rstd.span());
    dump_->keep("norm_out", normed.data(), T, D);
  }
}

void InferenceModel::decode_rows_in_turn(std::span<const int32_t> tokens,
                                         std::span<KvCache* const> caches,
                                         std::span<float> logits) {
  const int64_t B = static_cast<int64_t>(tokens.size()), V = config_.vocab_size;
  std::vector<RoutingPlan> routes(last_routes_.size());
  int64_t bytes = 0;
  for (int64_t i = 0; i < B; ++i) {
    forward(tokens.subspan(size_t(i), 1), *caches[size_t(i)],
            logits.subspan(size_t(i * V), size_t(V)));
    bytes += bytes_read_;
    for (size_t m = 0; m < routes.size(); ++m) {
      const RoutingPlan& one = last_routes_[m];
      RoutingPlan& all = routes[m];
      all.tokens = B;
      all.experts = one.experts;
      all.top_k = one.top_k;
      all.token_choice = one.token_choice;
      all.token.insert(all.token.end(), one.token.size(), static_cast<int32_t>(i));
      all.expert.insert(all.expert.end(), one.expert.begin(), one.expert.end());
      all.gate.insert(all.gate.end(), one.gate.begin(), one.gate.end());
    }
  }
  last_routes_ = std::move(routes);
  bytes_read_ = bytes;
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
