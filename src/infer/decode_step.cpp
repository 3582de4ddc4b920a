// The inference engine's decode step: one token through the whole model in one OpenMP parallel
// region (see InferenceModel::decode_step in the header, and the schedule below).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <exception>

#include "infer/inference_model.h"
#include "moe/moe_layer.h"
#include "nn/rmsnorm.h"
#include "nn/swiglu.h"
#include "tensor/gemm.h"
#include "tensor/quant.h"

namespace moe {
namespace {

// y[j0:j1] = w[j0:j1, :] · x for one token, on the calling thread; xq: x quantized for w's
// blocks when w is quantized (DecodeStep::quantized).
void weight_rows(const WeightView& w, const float* x, std::span<const uint8_t> xq, int64_t j0,
                 int64_t j1, float* y) {
  const int64_t K = w.shape[1];
  if (w.quant)
    quantized_rows(*w.quant, w.blocks(), K, xq, j0, j1, y);
  else if (w.dtype == TensorDtype::F32)
    gemm_few_rows(1, j0, j1, K, x, K, w.f32().data(), K, y, w.shape[0]);
  else
    gemm_few_rows(1, j0, j1, K, x, K, w.bf16().data(), K, y, w.shape[0]);
}

int64_t mlp_bytes(const ExpertWeights& e) {
  return e.gate.bytes() + e.up.bytes() + e.down.bytes();
}

}  // namespace

// The smallest share of a product's rows a thread takes at once (guided schedule: the first
// grabs are large, the last ones this small), in bytes of weight: small enough that the
// threads finish a product together, large enough that taking a share costs nothing beside
// streaming it; in a batched step, small enough to stay in L1 while every row passes it.
constexpr int64_t kShareBytes = 16 * 1024;

int64_t InferenceModel::share_rows(const WeightView& w) {
  const int64_t row_bytes = w.bytes() / std::max<int64_t>(w.shape[0], 1);
  return std::max<int64_t>(1, kShareBytes / std::max<int64_t>(row_bytes, 1));
}

// A decode step reads about 40 MB of weights per layer through some twenty products of one
// row; forking and joining the threads for each (as gemm does) and running the small parts
// between them on one thread while the other idles cost a share of the step. So the whole step
// is one parallel region: every product's output rows are shared among the threads (guided:
// large shares first, small ones last, so a thread that falls behind, preempted on a shared
// machine, leaves its rows to the others), and the threads meet at a barrier only where the
// next product needs the whole previous output. The small parts that every product needs
// whole (the norms, the router and its selection, the shared expert's gate) each thread
// computes itself, the same bits on each; q/k/v extras, RoPE and the KV cache run on one
// thread, attention splits by head. Each output is one thread's sum through the few-row kernel
// that gemm runs for one row, so the logits are the same to the bit whatever the thread count,
// and the same as when every product was its own parallel call.
//
//   per block:  each thread: n = RMSNorm(x)
//               q, k, v rows of n                                  | barrier
//               [one thread] q/k/v extras, RoPE, KV cache           | barrier
//               attention, heads shared                            | barrier
//               o rows of ctx, x += them                           | barrier
//               each thread: n = RMSNorm(x), router input, route (or a dense block's MLP)
//               gate and up rows of n, h = silu(gate) * up, all routed experts   | barrier
//               down rows: ffn += gate_e * (h_e down_e^T), ascending e, x += ffn | barrier
//               (expert cache: one expert at a time, read by one thread first; the shared
//               experts after the routed ones)
//   then:       each thread: final norm;  LM head rows -> logits
//
// Every member function below runs on every thread of the region (its omp for, single and
// barrier constructs bind to it), except where it says one thread.
class InferenceModel::DecodeStep {
 public:
  DecodeStep(InferenceModel& m, KvCache& cache, std::span<float> logits)
      : m_(m),
        cache_(cache),
        logits_(logits),
        D_(m.config_.hidden_size),
        pos_(cache.length),
        x_(m.x_.data()),
        qkv_(m.qkv_.data()),
        ctx_(m.ctx_.data()),
        ffn_(m.out_.data()),
        y_(m.rows_out_.data()),
        slots_(2 + m.most_routed_),
        hq_(static_cast<size_t>(omp_get_max_threads() * slots_)) {}

  void run() {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num();
      float* n = m_.n_.data() + t * D_;
      for (size_t l = 0; l < m_.blocks_.size(); ++l) {
        const Block& b = m_.blocks_[l];
        attention(b, l, n, m_.scores_.data() + t * cache_.capacity);
        norm(b.ffn_norm, n);
        if (b.moe)
          moe_ffn(b, n, m_.route_in_.data() + t * D_, m_.routes_[static_cast<size_t>(t)]);
        else
          dense_ffn(b, n);
      }
      head(m_.last_.data() + t * D_);
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // work() on one thread, then a barrier. An error there (an expert read that fails) is kept
  // for after the region; from then on every thread still meets every barrier but skips the
  // experts. failed_ only changes inside the single, so all threads read the same value after
  // its barrier.
  template <typename Work>
  void one_thread(Work&& work) {
#pragma omp single
    if (!failed_) {
      try {
        work();
      } catch (...) {
        error_ = std::current_exception();
        failed_ = true;
      }
    }
  }

  // out[j] = w[j, :] · v for every row j of w, the rows shared among the threads; then
  // epilogue(j0, j1) on the rows this thread made. No barrier at the end: the caller places it.
  template <typename Epilogue>
  void rows_of(const WeightView& w, const float* v, float* out, Epilogue&& epilogue) {
    const int64_t N = w.shape[0], step = share_rows(w), shares = (N + step - 1) / step;
    const std::span<const uint8_t> vq = quantized(w, v, 0);
#pragma omp for schedule(guided) nowait
    for (int64_t i = 0; i < shares; ++i) {
      const int64_t j0 = i * step, j1 = std::min(N, j0 + step);
      weight_rows(w, v, vq, j0, j1, out);
      epilogue(j0, j1);
    }
  }
  void rows_of(const WeightView& w, const float* v, float* out) {
    rows_of(w, v, out, [](int64_t, int64_t) {});
  }

  // v: [w's columns] quantized for products with w's blocks, into this thread's buffer `slot`
  // (each thread quantizes for itself: the same bits on each, no barrier); empty when w is not
  // quantized. Slots: 0 a product's input, 1 the up projection's when its type differs from
  // the gate's, 2 + e the e-th expert's down input.
  std::span<const uint8_t> quantized(const WeightView& w, const float* v, int64_t slot) {
    if (!w.quant) return {};
    std::vector<uint8_t>& buffer =
        m_.quantized_inputs_[size_t(omp_get_thread_num() * slots_ + slot)];
    const int64_t K = w.shape[1];
    buffer.resize(static_cast<size_t>(quant_row_bytes(activation_type(*w.quant), K)));
    quantize_activations(*w.quant, {v, size_t(K)}, buffer);
    return buffer;
  }

  // to: [D] = RMSNorm(x) with `weight`, on each thread alike.
  void norm(const float* weight, float* to) const {
    float unused_rstd;
    rmsnorm_forward(1, D_, m_.config_.rms_norm_eps, {x_, size_t(D_)}, {weight, size_t(D_)},
                    {to, size_t(D_)}, {&unused_rstd, 1});
  }

  // Counted once, by the master thread.
  void count(int64_t bytes) {
#pragma omp masked
    m_.bytes_read_ += bytes;
  }

  // x += Attn(RMSNorm(x)) of block l; starts the FFN's sum at zero. n, scores: this thread's.
  void attention(const Block& b, size_t l, float* n, float* scores) {
    const AttentionShape& a = m_.attn_;
    const int64_t H = a.heads, KV = a.kv_heads, hd = a.head_dim, W = a.qkv_width();
    norm(b.attn_norm, n);
    count(b.q.bytes() + b.k.bytes() + b.v.bytes() + b.o.bytes());
    rows_of(b.q, n, qkv_);
    rows_of(b.k, n, qkv_ + H * hd);
    rows_of(b.v, n, qkv_ + (H + KV) * hd);
#pragma omp barrier
    one_thread([&] {
      apply_qkv_extras(a, 1, b.extras, {qkv_, size_t(W)});
      attention_decode_append(a, m_.rope_, pos_, {qkv_, size_t(W)}, cache_.keys[l].span(),
                              cache_.values[l].span());
    });
#pragma omp for schedule(dynamic)
    for (int64_t head = 0; head < H; ++head)
      attention_decode_heads(a, pos_, head, head + 1, {qkv_, size_t(W)}, cache_.keys[l].span(),
                             cache_.values[l].span(), {scores, size_t(pos_ + 1)},
                             {ctx_, size_t(H * hd)});
    rows_of(b.o, ctx_, y_, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        x_[j] += y_[j];
        ffn_[j] = 0.0f;  // the FFN's sum starts here, for the same rows
      }
    });
#pragma omp barrier
  }

  // SwiGLU MLPs of the token's n, experts[i] weighted by scale[i]: h_i = silu(n gate_i^T) *
  // (n up_i^T), then ffn += scale_i (h_i down_i^T) row by row in the order given, and with
  // `last` (the block's last MLP) x += ffn. Two barriers whatever the count (expert choice may
  // route a token to none: then with `last` only x += ffn, one barrier).
  void swiglu_mlps(const ExpertWeights* const* experts, const float* scale, int64_t count,
                   const float* n, bool last) {
    if (failed_) return;
    if (count == 0) {
      if (!last) return;
#pragma omp for schedule(static)
      for (int64_t j = 0; j < D_; ++j) x_[j] += ffn_[j];
      return;
    }
    const int64_t widest = m_.widest_ffn_, F = experts[0]->gate.shape[0],
                  step = share_rows(experts[0]->gate), shares = (F + step - 1) / step;
    // The experts of one call share each matrix's type (checked when they are bound).
    const WeightView &gate0 = experts[0]->gate, &up0 = experts[0]->up;
    const std::span<const uint8_t> nq_gate = quantized(gate0, n, 0),
                                   nq_up =
                                       up0.quant == gate0.quant ? nq_gate : quantized(up0, n, 1);
#pragma omp for schedule(guided)
    for (int64_t i = 0; i < count * shares; ++i) {
      const ExpertWeights& e = *experts[i / shares];
      const int64_t j0 = i % shares * step, j1 = std::min(F, j0 + step);
      float *h = m_.gate_act_.data() + i / shares * widest,
            *u = m_.up_.data() + i / shares * widest;
      weight_rows(e.gate, n, nq_gate, j0, j1, h);
      weight_rows(e.up, n, nq_up, j0, j1, u);
      silu_gate(h + j0, h + j0, u + j0, j1 - j0);
    }
    const int64_t down_step = share_rows(experts[0]->down),
                  down_shares = (D_ + down_step - 1) / down_step;
    for (int64_t e = 0; e < count; ++e)
      hq_[size_t(omp_get_thread_num() * slots_ + e)] =
          quantized(experts[e]->down, m_.gate_act_.data() + e * widest, 2 + e);
#pragma omp for schedule(guided)
    for (int64_t i = 0; i < down_shares; ++i) {
      const int64_t j0 = i * down_step, j1 = std::min(D_, j0 + down_step);
      for (int64_t e = 0; e < count; ++e) {
        weight_rows(experts[e]->down, m_.gate_act_.data() + e * widest,
                    hq_[size_t(omp_get_thread_num() * slots_ + e)], j0, j1, y_);
        for (int64_t j = j0; j < j1; ++j) ffn_[j] += scale[e] * y_[j];
      }
      if (last)
        for (int64_t j = j0; j < j1; ++j) x_[j] += ffn_[j];
    }
  }

  void dense_ffn(const Block& b, const float* n) {
    const ExpertWeights* dense = &b.dense;
    const float one = 1.0f;
    count(mlp_bytes(b.dense));
    swiglu_mlps(&dense, &one, 1, n, true);
  }

  // The router's input: n, or for sequence routing the prefix mean with this position's
  // input counted, as the prefill's router_input computes it (the cache's sum moves on after
  // the step). mean: this thread's [D].
  const float* router_input(const Block& b, const float* n, float* mean) const {
    const MoeConfig& m = *m_.config_.moe;
    if (m.routing_level != RoutingLevel::Sequence) return n;
    const Tensor& sum = cache_.route_sums[static_cast<size_t>(b.moe_index)];
    const int64_t P = m.route_prefix;
    const float count = static_cast<float>(std::min(pos_, P - 1) + 1);
    for (int64_t d = 0; d < D_; ++d) mean[d] = (pos_ < P ? sum[d] + n[d] : sum[d]) / count;
    return mean;
  }

  // The MoE block: route (each thread alike), the routed experts, the shared experts.
  void moe_ffn(const Block& b, const float* n, float* mean, TokenRoute& route) {
    const MoeConfig& m = *m_.config_.moe;
    m_.route_token(b, router_input(b, n, mean), route);
#pragma omp masked
    {
      RoutingPlan& plan = m_.last_routes_[static_cast<size_t>(b.moe_index)];
      plan.tokens = 1;
      plan.token.assign(route.picks.size(), 0);
      plan.expert = route.picks;
      plan.gate = route.gates;
      if (m.routing_level == RoutingLevel::Sequence)
        std::copy_n(n, D_, m_.step_route_n_.data() + b.moe_index * D_);
    }
    count(m.num_experts * D_ * static_cast<int64_t>(sizeof(float)));
    const int64_t routed = static_cast<int64_t>(route.sorted.size());
    if (!m_.cache_) {
      int64_t bytes = 0;
      for (const ExpertWeights* e : route.experts) bytes += mlp_bytes(*e);
      count(bytes);
      swiglu_mlps(route.experts.data(), route.sorted_gates.data(), routed, n, !b.has_shared);
    } else {
      cached_experts(b, n, route);
    }
    if (b.has_shared) {
      const float scale = shared_expert_scale(n, b.shared_gate, D_);
      count(mlp_bytes(b.shared) + (b.shared_gate ? D_ * int64_t{sizeof(float)} : 0));
      const ExpertWeights* shared = &b.shared;
      swiglu_mlps(&shared, &scale, 1, n, true);
    }
  }

  // The routed experts through the expert cache. Pre-gating, as the prefill's: the next MoE
  // layer's router on this layer's input starts the reads of its likely experts. Then this
  // layer's experts one at a time: a cache slot's view holds until the next read of the layer.
  void cached_experts(const Block& b, const float* n, const TokenRoute& route) {
    const auto next = std::find_if(m_.blocks_.begin() + (&b - m_.blocks_.data()) + 1,
                                   m_.blocks_.end(), [](const Block& c) { return c.moe; });
    if (m_.options_.prefetch && next != m_.blocks_.end()) {
      one_thread([&] {
        m_.route_token(*next, n, m_.guess_);
        m_.cache_->prefetch(next->moe_index, m_.guess_.picks);
      });
      count(m_.config_.moe->num_experts * D_ * static_cast<int64_t>(sizeof(float)));
    }
    const int64_t routed = static_cast<int64_t>(route.sorted.size());
    if (routed == 0) swiglu_mlps(nullptr, nullptr, 0, n, !b.has_shared);
    for (int64_t j = 0; j < routed; ++j) {
      one_thread([&] { fetched_ = m_.cache_->get(b.moe_index, route.sorted[size_t(j)]); });
      if (!failed_) count(mlp_bytes(fetched_));
      const ExpertWeights* expert = &fetched_;
      swiglu_mlps(&expert, &route.sorted_gates[size_t(j)], 1, n, j == routed - 1 && !b.has_shared);
    }
  }

  // Final norm (each thread; last: its [D]) and the LM head's rows -> logits.
  void head(float* last) {
    norm(m_.final_norm_, last);
    count(m_.head_.bytes());
    if (!failed_) rows_of(m_.head_, last, logits_.data());
  }

  InferenceModel& m_;
  KvCache& cache_;
  std::span<float> logits_;
  const int64_t D_, pos_;
  float *x_, *qkv_, *ctx_, *ffn_, *y_;  // [D], [(H+2KV) hd], [H hd], [D], [D]
  // Quantized inputs (quantized()): buffer slots per thread, and the down inputs' views.
  const int64_t slots_;
  std::vector<std::span<const uint8_t>> hq_;
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
  ExpertWeights fetched_;  // an expert from the expert cache
};

void InferenceModel::decode_step(KvCache& cache, std::span<float> logits) {
  const int64_t D = config_.hidden_size, threads = omp_get_max_threads();
  ensure(n_, threads, D);
  ensure(last_, threads, D);
  ensure(route_in_, threads, D);
  ensure(step_route_n_, std::max<int64_t>(1, static_cast<int64_t>(moe_blocks_.size())), D);
  ensure(gate_act_, most_routed_, widest_ffn_);
  ensure(up_, most_routed_, widest_ffn_);
  ensure(rows_out_, 1, D);
  ensure(scores_, threads, cache.capacity);
  if (static_cast<int64_t>(routes_.size()) < threads) routes_.resize(static_cast<size_t>(threads));
  const auto input_slots = static_cast<size_t>(threads * (2 + most_routed_));
  if (quantized_inputs_.size() < input_slots) quantized_inputs_.resize(input_slots);
  DecodeStep(*this, cache, logits).run();
  const MoeConfig* m = config_.moe ? &*config_.moe : nullptr;
  if (m && m->routing_level == RoutingLevel::Sequence && cache.length < m->route_prefix)
    for (size_t i = 0; i < moe_blocks_.size(); ++i) {
      Tensor& sum = cache.route_sums[i];
      for (int64_t d = 0; d < D; ++d) sum[d] += step_route_n_[static_cast<int64_t>(i) * D + d];
    }
  cache.length += 1;
}

}  // namespace moe
