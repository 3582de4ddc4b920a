// The inference engine's batched decode step: one new token for each of B sequences (a
// server's concurrent requests), each with its own KV cache, in one pass over the weights.
//
// What it saves: every weight that any row uses is streamed from memory once per step for all
// the rows that use it. The dense weights (attention, the LM head, a dense MLP, the shared
// experts) serve every row; the rows that chose an expert are gathered and that expert's
// weights serve them together. So a step reads the dense weights once and the distinct experts
// the rows chose, instead of B times a token's bytes.
//
// What it keeps: each row's logits are the bits forward() gives that sequence alone. Every
// output of every product is the one-row kernel's sum of its row (gemm_rows_as_one, which
// loads each weight once for a pair of rows, or one quantized row dot per row), each weight
// share read from cache for the rows after the first;
// the norms, attention, routing and the order in which a row's experts are added are the
// decode step's (decode_step.cpp). A request's tokens therefore do not depend on its neighbours.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "infer/inference_model.h"
#include "moe/moe_layer.h"
#include "nn/rmsnorm.h"
#include "nn/swiglu.h"
#include "tensor/error.h"
#include "tensor/gemm.h"
#include "tensor/quant.h"

namespace moe {
namespace {

// Bytes a product or the attention must read before a parallel region pays for itself: a
// region wakes threads that wait passively (moe sets GOMP_SPINCOUNT low so that processes
// share the cores), tens of microseconds, the time of about a megabyte read. Below it one
// thread does the work sooner; each output is computed alike either way.
constexpr int64_t kParallelBytes = int64_t{1} << 20;

void norm_rows(int64_t rows, int64_t D, float eps, const float* x, const float* weight,
               float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    float unused_rstd;
    rmsnorm_forward(1, D, eps, {x + r * D, size_t(D)}, {weight, size_t(D)},
                    {out + r * D, size_t(D)}, {&unused_rstd, 1});
  }
}

}  // namespace

// y[r, :] = w · x[r, :] for `rows` rows (strides ldx, ldy), each output the one-row kernel's.
void InferenceModel::batch_rows(const WeightView& w, const float* x, int64_t rows, int64_t ldx,
                                float* y, int64_t ldy) {
  const int64_t N = w.shape[0], K = w.shape[1], step = share_rows(w),
                shares = (N + step - 1) / step;
  bytes_read_ += w.bytes();
  std::vector<uint8_t>& quantized = batch_inputs_;
  int64_t act_bytes = 0;
  if (w.quant) {
    act_bytes = quant_row_bytes(activation_type(*w.quant), K);
    quantized.resize(static_cast<size_t>(rows * act_bytes));
    for (int64_t r = 0; r < rows; ++r)
      quantize_activations(*w.quant, {x + r * ldx, size_t(K)},
                           {quantized.data() + r * act_bytes, size_t(act_bytes)});
  }
  const std::span<const uint8_t> blocks = w.quant ? w.blocks() : std::span<const uint8_t>{};
  const float* f32 = !w.quant && w.dtype == TensorDtype::F32 ? w.f32().data() : nullptr;
  const uint16_t* bf16 = !w.quant && w.dtype == TensorDtype::BF16 ? w.bf16().data() : nullptr;
#pragma omp parallel for schedule(guided) if (shares > 1 && rows * w.bytes() >= kParallelBytes)
  for (int64_t i = 0; i < shares; ++i) {
    const int64_t j0 = i * step, j1 = std::min(N, j0 + step);
    if (f32)
      gemm_rows_as_one(rows, j0, j1, K, x, ldx, f32, K, y, ldy);
    else if (bf16)
      gemm_rows_as_one(rows, j0, j1, K, x, ldx, bf16, K, y, ldy);
    else
      for (int64_t r = 0; r < rows; ++r)
        quantized_rows(*w.quant, blocks, K, {quantized.data() + r * act_bytes, size_t(act_bytes)},
                       j0, j1, y + r * ldy);
  }
}

// out[r, :] = SwiGLU expert e on x[r, :] for `rows` rows ([rows, D] both).
void InferenceModel::batch_swiglu(const ExpertWeights& e, const float* x, int64_t rows,
                                  float* out) {
  const int64_t D = config_.hidden_size, F = e.gate.shape[0];
  ensure(gate_act_, rows, F);
  ensure(up_, rows, F);
  batch_rows(e.gate, x, rows, D, gate_act_.data(), F);
  batch_rows(e.up, x, rows, D, up_.data(), F);
  for (int64_t r = 0; r < rows; ++r)
    silu_gate(gate_act_.data() + r * F, gate_act_.data() + r * F, up_.data() + r * F, F);
  batch_rows(e.down, gate_act_.data(), rows, F, out, D);
}

// rows_out_[r, :] = block l's attention on x_[r, :] (normed into n_) for every row ([B, D]
// both). Attention: the projections over all rows, then each row against its own cache
// (scores_: `longest` floats per thread).
void InferenceModel::batch_attention(size_t l, std::span<KvCache* const> caches, int64_t longest) {
  const Block& b = blocks_[l];
  const int64_t B = static_cast<int64_t>(caches.size()), D = config_.hidden_size;
  const int64_t H = attn_.heads, KV = attn_.kv_heads, hd = attn_.head_dim, W = attn_.qkv_width();
  float* n = n_.data();
  norm_rows(B, D, config_.rms_norm_eps, x_.data(), b.attn_norm, n);
  batch_rows(b.q, n, B, D, qkv_.data(), W);
  batch_rows(b.k, n, B, D, qkv_.data() + H * hd, W);
  batch_rows(b.v, n, B, D, qkv_.data() + (H + KV) * hd, W);
  for (int64_t r = 0; r < B; ++r) {
    KvCache& c = *caches[size_t(r)];
    const std::span<float> row = qkv_.span().subspan(size_t(r * W), size_t(W));
    apply_qkv_extras(attn_, 1, b.extras, row);
    attention_decode_append(attn_, rope_, c.length, row, c.keys[l].span(), c.values[l].span());
  }
  int64_t cache_bytes = 0;  // keys and values the step's rows read in this block
  for (const KvCache* c : caches)
    cache_bytes += 2 * (c->length + 1) * KV * hd * int64_t(sizeof(float));
#pragma omp parallel for schedule(dynamic) if (cache_bytes >= kParallelBytes)
  for (int64_t i = 0; i < B * H; ++i) {
    const int64_t r = i / H, head = i % H;
    const KvCache& c = *caches[size_t(r)];
    attention_decode_heads(
        attn_, c.length, head, head + 1, qkv_.span().subspan(size_t(r * W), size_t(W)),
        c.keys[l].span(), c.values[l].span(),
        scores_.span().subspan(size_t(omp_get_thread_num() * longest), size_t(c.length + 1)),
        ctx_.span().subspan(size_t(r * H * hd), size_t(H * hd)));
  }
  batch_rows(b.o, ctx_.data(), B, H * hd, rows_out_.data(), D);
}

void InferenceModel::decode_batch(std::span<const int32_t> tokens, std::span<KvCache* const> caches,
                                  std::span<float> logits) {
  const int64_t B = static_cast<int64_t>(tokens.size()), V = config_.vocab_size;
  require(static_cast<int64_t>(caches.size()) == B, "decode_batch: one cache per token");
  require(static_cast<int64_t>(logits.size()) == B * V, "decode_batch: logits must be [B, V]");
  if (B == 0) return;
  for (int64_t i = 0; i < B; ++i) {
    const KvCache& c = *caches[size_t(i)];
    require(c.length + 1 <= c.capacity, "decode_batch: the KV cache of row " + std::to_string(i) +
                                            " is full (" + std::to_string(c.capacity) +
                                            " positions)");
    require(tokens[size_t(i)] >= 0 && tokens[size_t(i)] < V,
            "token id " + std::to_string(tokens[size_t(i)]) + " is outside the vocabulary [0, " +
                std::to_string(V) + ")");
  }
  // The expert cache hands out one expert at a time, and a dump wants the batched prefill's
  // names: each sequence's step in turn there.
  if (B == 1 || cache_ || dump_) return decode_rows_in_turn(tokens, caches, logits);

  const int64_t D = config_.hidden_size, H = attn_.heads, hd = attn_.head_dim,
                W = attn_.qkv_width(), threads = omp_get_max_threads();
  bytes_read_ = 0;
  int64_t longest = 0;
  for (KvCache* c : caches) longest = std::max(longest, c->capacity);
  ensure(x_, B, D);
  ensure(n_, B, D);
  ensure(qkv_, B, W);
  ensure(ctx_, B, H * hd);
  ensure(out_, B, D);  // the FFN's sum per row
  ensure(rows_in_, B, D);
  ensure(rows_out_, B, D);
  ensure(route_in_, B, D);
  ensure(scores_, threads, longest);
  if (static_cast<int64_t>(batch_routes_.size()) < B) batch_routes_.resize(size_t(B));

  for (int64_t r = 0; r < B; ++r)
    widen_row(embed_, tokens[size_t(r)], x_.span().subspan(size_t(r * D), size_t(D)));
  bytes_read_ += B * (embed_.bytes() / V);

  float *x = x_.data(), *n = n_.data(), *ffn = out_.data();
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const Block& b = blocks_[l];
    batch_attention(l, caches, longest);
    for (int64_t i = 0; i < B * D; ++i) {
      x[i] += rows_out_[i];
      ffn[i] = 0.0f;
    }

    norm_rows(B, D, config_.rms_norm_eps, x, b.ffn_norm, n);
    if (b.moe)
      batch_moe(b, n, caches);
    else
      batch_swiglu(b.dense, n, B, ffn);
    for (int64_t i = 0; i < B * D; ++i) x[i] += ffn[i];
  }
  for (KvCache* c : caches) c->length += 1;

  ensure(last_, B, D);
  norm_rows(B, D, config_.rms_norm_eps, x, final_norm_, last_.data());
  batch_rows(head_, last_.data(), B, D, logits.data(), V);
}

// ffn[r, :] += the MoE FFN of block b on n[r, :] for every row: each row routed as the decode
// step routes it, the rows of each chosen expert gathered, each row's experts added in
// ascending order, then the shared experts.
void InferenceModel::batch_moe(const Block& b, const float* n, std::span<KvCache* const> caches) {
  const MoeConfig& m = *config_.moe;
  const int64_t B = static_cast<int64_t>(caches.size()), D = config_.hidden_size, E = m.num_experts,
                P = m.route_prefix;
  const bool sequence = m.routing_level == RoutingLevel::Sequence;
  RoutingPlan& plan = last_routes_[static_cast<size_t>(b.moe_index)];
  plan = RoutingPlan{B, E, m.top_k, m.router_type != RouterType::ExpertChoice, {}, {}, {}};
  std::vector<std::vector<std::pair<int64_t, float>>> rows_of(static_cast<size_t>(E));
  for (int64_t r = 0; r < B; ++r) {
    const float* nr = n + r * D;
    const float* input = nr;
    KvCache& c = *caches[size_t(r)];
    if (sequence) {  // the prefix mean with this position counted, as the decode step has it
      const Tensor& sum = c.route_sums[static_cast<size_t>(b.moe_index)];
      const int64_t pos = c.length;
      const float count = static_cast<float>(std::min(pos, P - 1) + 1);
      float* mean = route_in_.data() + r * D;
      for (int64_t d = 0; d < D; ++d) mean[d] = (pos < P ? sum[d] + nr[d] : sum[d]) / count;
      input = mean;
    }
    TokenRoute& route = batch_routes_[size_t(r)];
    route_token(b, input, route);
    plan.token.insert(plan.token.end(), route.picks.size(), static_cast<int32_t>(r));
    plan.expert.insert(plan.expert.end(), route.picks.begin(), route.picks.end());
    plan.gate.insert(plan.gate.end(), route.gates.begin(), route.gates.end());
    for (size_t j = 0; j < route.sorted.size(); ++j)
      rows_of[size_t(route.sorted[j])].emplace_back(r, route.sorted_gates[j]);
  }
  if (sequence)  // the sums move on after the step, as the decode step moves them
    for (int64_t r = 0; r < B; ++r) {
      KvCache& c = *caches[size_t(r)];
      if (c.length >= P) continue;
      Tensor& sum = c.route_sums[static_cast<size_t>(b.moe_index)];
      for (int64_t d = 0; d < D; ++d) sum[d] += n[r * D + d];
    }
  bytes_read_ += E * D * static_cast<int64_t>(sizeof(float));  // the router

  // Experts in ascending order: each row's sum gets its experts in the order the decode step
  // adds them (ascending expert id).
  float* ffn = out_.data();
  for (int64_t e = 0; e < E; ++e) {
    const auto& rows = rows_of[size_t(e)];
    if (rows.empty()) continue;
    const int64_t count = static_cast<int64_t>(rows.size());
    for (int64_t i = 0; i < count; ++i)
      std::copy_n(n + rows[size_t(i)].first * D, D, rows_in_.data() + i * D);
    batch_swiglu(b.experts[size_t(e)], rows_in_.data(), count, rows_out_.data());
    for (int64_t i = 0; i < count; ++i) {
      const auto [r, gate] = rows[size_t(i)];
      for (int64_t d = 0; d < D; ++d) ffn[r * D + d] += gate * rows_out_[i * D + d];
    }
  }
  if (!b.has_shared) return;
  batch_swiglu(b.shared, n, B, rows_out_.data());
  for (int64_t r = 0; r < B; ++r) {
    const float scale = shared_expert_scale(n + r * D, b.shared_gate, D);
    for (int64_t d = 0; d < D; ++d) ffn[r * D + d] += scale * rows_out_[r * D + d];
  }
  if (b.shared_gate) bytes_read_ += D * static_cast<int64_t>(sizeof(float));
}

}  // namespace moe
