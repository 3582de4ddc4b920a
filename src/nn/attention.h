#pragma once
// Causal multi-head self-attention with rotary position embeddings (RoPE, Su et al. 2021, in
// Hugging Face's rotate-half layout) and grouped-query heads (GQA, Ainslie et al. 2023):
// H query heads share KV key/value heads, H / KV query heads per group.
//
//   qkv = x Wqkv^T            Wqkv: [(H + 2 KV) hd, D] = q_proj, k_proj, v_proj stacked
//   q, k <- RoPE(q, k, position within the sequence)
//   ctx_h = softmax(q_h k_g^T / sqrt(hd) + causal mask) v_g,   g = h / (H / KV)
//   y = ctx Wo^T              Wo: [D, H hd]
//
// The core runs FlashAttention's way (Dao et al. 2022): over tiles of 128 query rows by 256 key
// columns, causal tiles above the diagonal skipped (in a diagonal tile, the keys past the last
// row of each 64-row half too), with an online softmax (a running maximum and sum of
// exponentials per row, the partial output rescaled when the maximum grows). The probabilities
// are never stored whole: forward keeps each row's logsumexp and backward recomputes them tile
// by tile from it. Saved memory is O(T) per head and the scratch is a few tiles per thread,
// whatever the sequence length.
#include <cstdint>
#include <span>
#include <vector>

namespace moe {

struct AttentionShape {
  int64_t batch;     // B sequences
  int64_t seq;       // S positions per sequence
  int64_t model;     // D
  int64_t heads;     // H
  int64_t kv_heads;  // KV, divides H
  int64_t head_dim;  // hd, even

  int64_t tokens() const { return batch * seq; }
  int64_t qkv_width() const { return (heads + 2 * kv_heads) * head_dim; }
  int64_t ctx_width() const { return heads * head_dim; }
};

// What some architectures apply to the projection before RoPE, in this order:
//   a = qkv + bias                                (Qwen2-MoE's q/k/v biases)
//   q <- RMSNorm(q) over its whole H hd values, k likewise over KV hd   (OLMoE's q/k norm)
//   q, k, v clamped to [-clip, clip]              (OLMoE's clip_qkv)
// Empty spans and clip 0 leave a step out; the default is none of them.
struct QkvExtras {
  std::span<const float> bias;    // [(H+2KV) hd] or empty
  std::span<const float> q_norm;  // [H hd] or empty (empty together with k_norm)
  std::span<const float> k_norm;  // [KV hd] or empty
  float norm_eps = 1e-5f;
  float clip = 0.0f;  // 0 = no clamp
  // [T, (H+2KV) hd]: where the forward keeps `a` (before the norm and the clamp) for the
  // backward, which needs it when there is a norm or a clamp; empty when nothing trains
  // (decoding).
  std::span<float> saved;

  bool needs_saved() const { return !q_norm.empty() || clip > 0.0f; }
};

// The extras' parameter gradients (added to; empty for an extra that is absent).
struct QkvExtrasGrads {
  std::span<float> bias, q_norm, k_norm;
};

// qkv: [tokens, (H+2KV) hd] as projected (not yet rotated): the extras applied in place (and
// `a` kept in extras.saved when it is given).
void apply_qkv_extras(const AttentionShape& s, int64_t tokens, const QkvExtras& extras,
                      std::span<float> qkv);

// dqkv: [tokens, (H+2KV) hd], the gradient of the extras' output, becomes in place that of
// their input (the projection); grads are added to. Needs extras.saved from the forward when
// extras.needs_saved().
void qkv_extras_backward(const AttentionShape& s, int64_t tokens, const QkvExtras& extras,
                         std::span<float> dqkv, const QkvExtrasGrads& grads);

// cos/sin of position * theta^(-2i/hd) for i < hd/2, positions [0, max_positions).
class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(int64_t head_dim, int64_t max_positions, double theta);
  int64_t max_positions() const { return max_positions_; }
  // vec: [hd] rotated in place to position pos.
  void rotate(float* vec, int64_t pos) const;
  // grad: [hd] through the rotation's transpose (the backward of rotate).
  void rotate_back(float* grad, int64_t pos) const;

 private:
  int64_t half_ = 0;
  int64_t max_positions_ = 0;
  std::vector<float> cos_, sin_;  // [max_positions, hd/2]
};

// Floats of scratch the forward/backward need for `threads` OpenMP threads (two score tiles
// per thread: independent of the sequence length).
int64_t attention_scratch_size(const AttentionShape& s, int threads);

// x: [T, D]  wqkv: [(H+2KV) hd, D]  wo: [D, H hd]
// qkv: [T, (H+2KV) hd] saved (q and k rotated)  ctx: [T, H hd] saved  lse: [B, H, S] saved
// y: [T, D] overwritten.
void attention_forward(const AttentionShape& s, const RopeTable& rope, std::span<const float> x,
                       std::span<const float> wqkv, std::span<const float> wo, std::span<float> qkv,
                       std::span<float> ctx, std::span<float> lse, std::span<float> y,
                       std::span<float> scratch, const QkvExtras& extras = {});

// dy: [T, D] -> dx: [T, D] overwritten; dwqkv, dwo and the extras' gradients added to.
// dqkv: [T, (H+2KV) hd] and dctx: [T, H hd] are scratch. `extras` as in the forward.
void attention_backward(const AttentionShape& s, const RopeTable& rope, std::span<const float> x,
                        std::span<const float> wqkv, std::span<const float> wo,
                        std::span<const float> qkv, std::span<const float> ctx,
                        std::span<const float> lse, std::span<const float> dy,
                        std::span<float> dqkv, std::span<float> dctx, std::span<float> dx,
                        std::span<float> dwqkv, std::span<float> dwo, std::span<float> scratch,
                        const QkvExtras& extras = {}, const QkvExtrasGrads& extras_grads = {});

// One new token at position pos against a KV cache (generation). qkv: [(H+2KV) hd] of the
// token, q and k rotated in place; its k and v are written to row pos of key_cache and
// value_cache ([max_positions, KV hd], keys rotated); ctx: [H hd] = softmax(q_h k_g^T /
// sqrt(hd)) v_g over positions 0..pos. scores: [pos + 1] scratch. Only the head fields of s
// are read. Each q.k is summed in 16 partial sums (element d into sum d mod 16) added pairwise,
// each ctx value over the positions in order.
void attention_decode(const AttentionShape& s, const RopeTable& rope, int64_t pos,
                      std::span<float> qkv, std::span<float> key_cache,
                      std::span<float> value_cache, std::span<float> scores, std::span<float> ctx);

// attention_decode in its two parts, for callers that share the heads among threads:
// attention_decode_append rotates q and k in place and writes k and v to row pos of the caches;
// attention_decode_heads then writes ctx for query heads [h0, h1) only (scores: [pos + 1]
// scratch of the calling thread).
void attention_decode_append(const AttentionShape& s, const RopeTable& rope, int64_t pos,
                             std::span<float> qkv, std::span<float> key_cache,
                             std::span<float> value_cache);
void attention_decode_heads(const AttentionShape& s, int64_t pos, int64_t h0, int64_t h1,
                            std::span<const float> qkv, std::span<const float> key_cache,
                            std::span<const float> value_cache, std::span<float> scores,
                            std::span<float> ctx);

}  // namespace moe
