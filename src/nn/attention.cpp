#include "nn/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "tensor/dispatch.h"
#include "tensor/error.h"
#include "tensor/fast_exp.h"
#include "tensor/gemm.h"
#include "tensor/lanes.h"
#include "tensor/vector_ops.h"

namespace moe {

RopeTable::RopeTable(int64_t head_dim, int64_t max_positions, double theta)
    : half_(head_dim / 2), max_positions_(max_positions) {
  require(head_dim > 0 && head_dim % 2 == 0, "RoPE: head_dim must be positive and even");
  require(max_positions > 0, "RoPE: max_positions must be positive");
  cos_.resize(static_cast<size_t>(max_positions * half_));
  sin_.resize(cos_.size());
  for (int64_t p = 0; p < max_positions; ++p)
    for (int64_t i = 0; i < half_; ++i) {
      const double inv_freq = std::pow(theta, -2.0 * double(i) / double(head_dim));
      const double angle = double(p) * inv_freq;
      cos_[p * half_ + i] = static_cast<float>(std::cos(angle));
      sin_[p * half_ + i] = static_cast<float>(std::sin(angle));
    }
}

void RopeTable::rotate(float* vec, int64_t pos) const {
  const float* c = cos_.data() + pos * half_;
  const float* s = sin_.data() + pos * half_;
  for (int64_t i = 0; i < half_; ++i) {
    const float a = vec[i], b = vec[i + half_];
    vec[i] = a * c[i] - b * s[i];
    vec[i + half_] = b * c[i] + a * s[i];
  }
}

void RopeTable::rotate_back(float* grad, int64_t pos) const {
  const float* c = cos_.data() + pos * half_;
  const float* s = sin_.data() + pos * half_;
  for (int64_t i = 0; i < half_; ++i) {
    const float a = grad[i], b = grad[i + half_];
    grad[i] = a * c[i] + b * s[i];
    grad[i + half_] = b * c[i] - a * s[i];
  }
}

namespace {

// The causal core works on tiles of kRowBlock query rows by kKeyBlock key columns. A row block
// visits only the key blocks that start before its last row, so the masked upper triangle is
// skipped a whole tile at a time; the scores live in one tile at a time, so the scratch does
// not grow with the sequence length.
constexpr int64_t kRowBlock = 128;
// A multiple of kRowBlock: then every key block a row block visits starts at or before the
// block's first row, and each row has at least one unmasked column in every tile it sees.
constexpr int64_t kKeyBlock = 256;
static_assert(kKeyBlock % kRowBlock == 0);
constexpr int64_t kTile = kRowBlock * kKeyBlock;
// Per thread: two score tiles and two per-row vectors, padded to a cache line so that no
// two threads write the same line.
constexpr int64_t kThreadScratch = (2 * kTile + 2 * kRowBlock + 15) / 16 * 16;

// One thread's share of the scratch.
struct TileScratch {
  float* scores;  // [kRowBlock, kKeyBlock]: logits, then probabilities (then their gradient)
  float* grads;   // [kRowBlock, kKeyBlock]: dP in the backward
  float* row_a;   // [kRowBlock]: running max (forward) or rowsum(dout * out) (backward)
  float* row_b;   // [kRowBlock]: running sum of exponentials (forward)
};

// Calls body(first row, rows, key columns needed) for the parts of the tile of `rows` query rows
// from r0 by `cols` keys from c0: the whole tile, except on the diagonal, where each 64 rows
// need only the keys up to their last row (half of a 128 x 128 tile is masked).
constexpr int64_t kDiagonalRows = 64;
static_assert(kRowBlock % kDiagonalRows == 0);
template <typename Body>
void for_tile_parts(int64_t r0, int64_t rows, int64_t c0, int64_t cols, Body&& body) {
  const int64_t step = c0 + cols == r0 + rows ? kDiagonalRows : rows;
  for (int64_t a0 = 0; a0 < rows; a0 += step) {
    const int64_t a1 = std::min(rows, a0 + step);
    body(a0, a1 - a0, std::min(cols, r0 + a1 - c0));
  }
}

TileScratch thread_tiles(std::span<float> scratch) {
  float* base = scratch.data() + int64_t{omp_get_thread_num()} * kThreadScratch;
  return {base, base + kTile, base + 2 * kTile, base + 2 * kTile + kRowBlock};
}

void check_shape(const AttentionShape& s, const RopeTable& rope, int64_t scratch) {
  require(s.batch > 0 && s.seq > 0 && s.model > 0, "attention: empty shape");
  require(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
          "attention: num_key_value_heads must divide num_attention_heads");
  if (s.seq > rope.max_positions())
    throw Error("attention: sequence length " + std::to_string(s.seq) +
                " exceeds max_position_embeddings " + std::to_string(rope.max_positions()));
  if (scratch < attention_scratch_size(s, omp_get_max_threads()))
    throw Error("attention: scratch too small");
}

// Rotates (or un-rotates, for gradients) the q and k heads of every token in place.
void rope_qk(const AttentionShape& s, const RopeTable& rope, std::span<float> qkv, bool back) {
  const int64_t W = s.qkv_width(), hd = s.head_dim, rotated = s.heads + s.kv_heads;
#pragma omp parallel for schedule(static) if (s.tokens() * W > 65536)
  for (int64_t t = 0; t < s.tokens(); ++t) {
    const int64_t pos = t % s.seq;
    for (int64_t h = 0; h < rotated; ++h) {
      float* v = qkv.data() + t * W + h * hd;
      back ? rope.rotate_back(v, pos) : rope.rotate(v, pos);
    }
  }
}

}  // namespace

int64_t attention_scratch_size(const AttentionShape&, int threads) {
  return int64_t{threads} * kThreadScratch;
}

namespace {

void check_extras(const AttentionShape& s, int64_t tokens, const QkvExtras& e,
                  std::span<const float> qkv) {
  const int64_t W = s.qkv_width(), Q = s.heads * s.head_dim, K = s.kv_heads * s.head_dim;
  require(static_cast<int64_t>(qkv.size()) >= tokens * W, "qkv extras: qkv too small");
  require(e.bias.empty() || static_cast<int64_t>(e.bias.size()) == W,
          "qkv extras: bias must hold (H+2KV) hd values");
  require(e.q_norm.empty() == e.k_norm.empty() &&
              (e.q_norm.empty() || (static_cast<int64_t>(e.q_norm.size()) == Q &&
                                    static_cast<int64_t>(e.k_norm.size()) == K)),
          "qkv extras: q_norm [H hd] and k_norm [KV hd] go together");
  require(e.saved.empty() || static_cast<int64_t>(e.saved.size()) >= tokens * W,
          "qkv extras: saved must hold [T, (H+2KV) hd]");
}

// 1 / sqrt(mean(v^2) + eps) over n values.
float rms_inverse(const float* v, int64_t n, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += v[i] * v[i];
  return 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
}

}  // namespace

void apply_qkv_extras(const AttentionShape& s, int64_t tokens, const QkvExtras& e,
                      std::span<float> qkv) {
  check_extras(s, tokens, e, qkv);
  if (e.bias.empty() && e.q_norm.empty() && e.clip == 0.0f) return;
  const int64_t W = s.qkv_width(), Q = s.heads * s.head_dim;
  // RMSNorm in place over w.size() values, as Llama's: w * (v / sqrt(mean(v^2) + eps)).
  auto norm = [&](float* v, std::span<const float> w) {
    const int64_t n = static_cast<int64_t>(w.size());
    const float rstd = rms_inverse(v, n, e.norm_eps);
    for (int64_t i = 0; i < n; ++i) v[i] = w[i] * (v[i] * rstd);
  };
#pragma omp parallel for schedule(static) if (tokens * W > 65536)
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = qkv.data() + t * W;
    if (!e.bias.empty())
      for (int64_t i = 0; i < W; ++i) row[i] += e.bias[i];
    if (!e.saved.empty()) std::copy_n(row, W, e.saved.data() + t * W);
    if (!e.q_norm.empty()) {
      norm(row, e.q_norm);
      norm(row + Q, e.k_norm);
    }
    if (e.clip > 0.0f)
      for (int64_t i = 0; i < W; ++i) row[i] = std::clamp(row[i], -e.clip, e.clip);
  }
}

void qkv_extras_backward(const AttentionShape& s, int64_t tokens, const QkvExtras& e,
                         std::span<float> dqkv, const QkvExtrasGrads& g) {
  check_extras(s, tokens, e, dqkv);
  require(!e.needs_saved() || !e.saved.empty(),
          "qkv extras backward: the forward kept no input (saved is empty)");
  require(e.bias.empty() || g.bias.size() == e.bias.size(),
          "qkv extras backward: bias gradient missing");
  require(g.q_norm.size() == e.q_norm.size() && g.k_norm.size() == e.k_norm.size(),
          "qkv extras backward: norm gradients missing");
  const int64_t W = s.qkv_width(), Q = s.heads * s.head_dim;
  // Through y = w * a * r, r = (mean(a^2) + eps)^-1/2, one span of n values:
  //   dw_i += dy_i a_i r,   da_i = r w_i dy_i - r^3 a_i mean_j(w_j dy_j a_j).
  auto norm_back = [&](const float* a, float* d, std::span<const float> w, std::span<float> dw) {
    const int64_t n = static_cast<int64_t>(w.size());
    const float r = rms_inverse(a, n, e.norm_eps);
    float dot = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      dot += w[i] * d[i] * a[i];
      dw[i] += d[i] * a[i] * r;
    }
    const float c = r * r * r * dot / static_cast<float>(n);
    for (int64_t i = 0; i < n; ++i) d[i] = r * w[i] * d[i] - c * a[i];
  };
  // Rows in order, one thread: the parameter gradients are sums over every row.
  const int64_t K = s.kv_heads * s.head_dim;
  std::vector<float> clamp_input(static_cast<size_t>(W));
  for (int64_t t = 0; t < tokens; ++t) {
    float* d = dqkv.data() + t * W;
    const float* a = e.saved.empty() ? nullptr : e.saved.data() + t * W;
    if (e.clip > 0.0f) {
      // The clamp passes the gradient where its input (a after the norms, recomputed with
      // the forward's arithmetic) lay inside [-clip, clip].
      float* c = clamp_input.data();
      std::copy_n(a, W, c);
      if (!e.q_norm.empty()) {
        const float rq = rms_inverse(a, Q, e.norm_eps), rk = rms_inverse(a + Q, K, e.norm_eps);
        for (int64_t i = 0; i < Q; ++i) c[i] = e.q_norm[i] * (a[i] * rq);
        for (int64_t i = 0; i < K; ++i) c[Q + i] = e.k_norm[i] * (a[Q + i] * rk);
      }
      for (int64_t i = 0; i < W; ++i)
        if (c[i] < -e.clip || c[i] > e.clip) d[i] = 0.0f;
    }
    if (!e.q_norm.empty()) {
      norm_back(a, d, e.q_norm, g.q_norm);
      norm_back(a + Q, d + Q, e.k_norm, g.k_norm);
    }
    if (!e.bias.empty())
      for (int64_t i = 0; i < W; ++i) g.bias[i] += d[i];
  }
}

void attention_forward(const AttentionShape& s, const RopeTable& rope, std::span<const float> x,
                       std::span<const float> wqkv, std::span<const float> wo, std::span<float> qkv,
                       std::span<float> ctx, std::span<float> lse, std::span<float> y,
                       std::span<float> scratch, const QkvExtras& extras) {
  check_shape(s, rope, static_cast<int64_t>(scratch.size()));
  const int64_t T = s.tokens(), D = s.model, S = s.seq, H = s.heads, hd = s.head_dim;
  const int64_t W = s.qkv_width(), C = s.ctx_width(), group = H / s.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  gemm(Trans::No, Trans::Yes, T, W, D, 1.0f, x.data(), D, wqkv.data(), D, 0.0f, qkv.data(), W);
  apply_qkv_extras(s, T, extras, qkv);
  rope_qk(s, rope, qkv, false);

  // One (sequence, head, row block) per task: each writes only its own rows of ctx and lse, so
  // the bits do not depend on which thread takes it. BLAS runs single-threaded inside the
  // loop. The last row blocks, which see the most keys, go first.
  const int64_t row_blocks = (S + kRowBlock - 1) / kRowBlock, heads = s.batch * H;
  const int64_t tasks = heads * row_blocks;
#pragma omp parallel for schedule(dynamic) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t rb = row_blocks - 1 - task / heads, b = task % heads / H, h = task % H;
    const int64_t g = h / group, r0 = rb * kRowBlock, r1 = std::min(S, r0 + kRowBlock);
    const int64_t rows = r1 - r0;
    const TileScratch tile = thread_tiles(scratch);
    float* row_max = tile.row_a;
    float* row_sum = tile.row_b;
    const float* q = qkv.data() + (b * S + r0) * W + h * hd;
    const float* k = qkv.data() + b * S * W + (H + g) * hd;
    const float* v = qkv.data() + b * S * W + (H + s.kv_heads + g) * hd;
    float* out = ctx.data() + (b * S + r0) * C + h * hd;
    // Online softmax over the key blocks: each row keeps the largest logit seen so far and
    // the sum of exponentials relative to it; when a block raises the maximum, the sum and
    // the output accumulated so far are rescaled by exp(old max - new max).
    for (int64_t c0 = 0; c0 < r1; c0 += kKeyBlock) {
      const int64_t cols = std::min(r1, c0 + kKeyBlock) - c0;
      const bool first = c0 == 0;
      for_tile_parts(r0, rows, c0, cols, [&](int64_t a0, int64_t part, int64_t needed) {
        gemm(Trans::No, Trans::Yes, part, needed, hd, scale, q + a0 * W, W, k + c0 * W, W, 0.0f,
             tile.scores + a0 * kKeyBlock, kKeyBlock);
      });
      for (int64_t r = 0; r < rows; ++r) {
        float* p = tile.scores + r * kKeyBlock;
        const int64_t unmasked = std::min(cols, r0 + r + 1 - c0);
        const float m = std::max(first ? -std::numeric_limits<float>::infinity() : row_max[r],
                                 max_value(p, unmasked));
        const float sum = exp_shifted_sum(p, p, unmasked, m);
        std::fill(p + unmasked, p + cols, 0.0f);
        if (first) {
          row_sum[r] = sum;
        } else {
          const float rescale = fast_exp(row_max[r] - m);
          row_sum[r] = row_sum[r] * rescale + sum;
          for (int64_t d = 0; d < hd; ++d) out[r * C + d] *= rescale;
        }
        row_max[r] = m;
      }
      for_tile_parts(r0, rows, c0, cols, [&](int64_t a0, int64_t part, int64_t needed) {
        gemm(Trans::No, Trans::No, part, hd, needed, 1.0f, tile.scores + a0 * kKeyBlock, kKeyBlock,
             v + c0 * W, W, first ? 0.0f : 1.0f, out + a0 * C, C);
      });
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float inv = 1.0f / row_sum[r];
      for (int64_t d = 0; d < hd; ++d) out[r * C + d] *= inv;
      lse[(b * H + h) * S + r0 + r] = row_max[r] + std::log(row_sum[r]);
    }
  }
  gemm(Trans::No, Trans::Yes, T, D, C, 1.0f, ctx.data(), C, wo.data(), C, 0.0f, y.data(), D);
}

namespace {

// The causal core's backward for one task of attention_backward, (sequence b, kv group g):
// dq of the group's heads, dk and dv of its key and value head.
// qkv, dqkv: [T, W]  ctx, dctx: [T, C]  lse: [B, H, S]
void causal_core_backward_group(const AttentionShape& s, int64_t b, int64_t g,
                                std::span<const float> qkv, std::span<const float> ctx,
                                std::span<const float> lse, std::span<const float> dctx,
                                std::span<float> dqkv, const TileScratch& tile) {
  const int64_t S = s.seq, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t W = s.qkv_width(), C = s.ctx_width(), group = H / KV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* delta = tile.row_a;
  const float* k = qkv.data() + b * S * W + (H + g) * hd;
  const float* v = qkv.data() + b * S * W + (H + KV + g) * hd;
  float* dk = dqkv.data() + b * S * W + (H + g) * hd;
  float* dv = dqkv.data() + b * S * W + (H + KV + g) * hd;
  for (int64_t i = 0; i < S; ++i) {
    std::fill_n(dk + i * W, hd, 0.0f);
    std::fill_n(dv + i * W, hd, 0.0f);
  }
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const float* row_lse = lse.data() + (b * H + h) * S;
    for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
      const int64_t r1 = std::min(S, r0 + kRowBlock), rows = r1 - r0;
      const float* q = qkv.data() + (b * S + r0) * W + h * hd;
      const float* o = ctx.data() + (b * S + r0) * C + h * hd;
      const float* dout = dctx.data() + (b * S + r0) * C + h * hd;
      float* dq = dqkv.data() + (b * S + r0) * W + h * hd;
      // rowsum(dout * out): the softmax backward's per-row term, the same for every tile.
      for (int64_t r = 0; r < rows; ++r) delta[r] = dot(dout + r * C, o + r * C, hd);
      for (int64_t c0 = 0; c0 < r1; c0 += kKeyBlock) {
        const int64_t cols = std::min(r1, c0 + kKeyBlock) - c0;
        float* p = tile.scores;
        float* dp = tile.grads;
        // P = exp(q k^T * scale - lse) under the causal mask.
        for_tile_parts(r0, rows, c0, cols, [&](int64_t a0, int64_t part, int64_t needed) {
          gemm(Trans::No, Trans::Yes, part, needed, hd, scale, q + a0 * W, W, k + c0 * W, W, 0.0f,
               p + a0 * kKeyBlock, kKeyBlock);
        });
        for (int64_t r = 0; r < rows; ++r) {
          float* pr = p + r * kKeyBlock;
          const float m = row_lse[r0 + r];
          const int64_t unmasked = std::min(cols, r0 + r + 1 - c0);
          exp_shifted(pr, unmasked, m);
          std::fill(pr + unmasked, pr + cols, 0.0f);
        }
        // dV += P^T dout;  dP = dout V^T
        for_tile_parts(r0, rows, c0, cols, [&](int64_t a0, int64_t part, int64_t needed) {
          gemm(Trans::Yes, Trans::No, needed, hd, part, 1.0f, p + a0 * kKeyBlock, kKeyBlock,
               dout + a0 * C, C, 1.0f, dv + c0 * W, W);
          gemm(Trans::No, Trans::Yes, part, needed, hd, 1.0f, dout + a0 * C, C, v + c0 * W, W, 0.0f,
               dp + a0 * kKeyBlock, kKeyBlock);
        });
        // dlogits = P * (dP - delta) * scale  (softmax backward, scale folded in); masked
        // entries stay 0 with P.
        for (int64_t r = 0; r < rows; ++r) {
          float* pr = p + r * kKeyBlock;
          const float* dpr = dp + r * kKeyBlock;
          const int64_t unmasked = std::min(cols, r0 + r + 1 - c0);
#pragma omp simd
          for (int64_t j = 0; j < unmasked; ++j) pr[j] = pr[j] * (dpr[j] - delta[r]) * scale;
        }
        // dQ (+)= dlogits K;  dK += dlogits^T Q
        for_tile_parts(r0, rows, c0, cols, [&](int64_t a0, int64_t part, int64_t needed) {
          gemm(Trans::No, Trans::No, part, hd, needed, 1.0f, p + a0 * kKeyBlock, kKeyBlock,
               k + c0 * W, W, c0 == 0 ? 0.0f : 1.0f, dq + a0 * W, W);
          gemm(Trans::Yes, Trans::No, needed, hd, part, 1.0f, p + a0 * kKeyBlock, kKeyBlock,
               q + a0 * W, W, 1.0f, dk + c0 * W, W);
        });
      }
    }
  }
}

}  // namespace

void attention_backward(const AttentionShape& s, const RopeTable& rope, std::span<const float> x,
                        std::span<const float> wqkv, std::span<const float> wo,
                        std::span<const float> qkv, std::span<const float> ctx,
                        std::span<const float> lse, std::span<const float> dy,
                        std::span<float> dqkv, std::span<float> dctx, std::span<float> dx,
                        std::span<float> dwqkv, std::span<float> dwo, std::span<float> scratch,
                        const QkvExtras& extras, const QkvExtrasGrads& extras_grads) {
  check_shape(s, rope, static_cast<int64_t>(scratch.size()));
  const int64_t T = s.tokens(), D = s.model, KV = s.kv_heads;
  const int64_t W = s.qkv_width(), C = s.ctx_width();

  // y = ctx Wo^T:  dWo += dy^T ctx,  dctx = dy Wo
  gemm(Trans::Yes, Trans::No, D, C, T, 1.0f, dy.data(), D, ctx.data(), C, 1.0f, dwo.data(), C);
  gemm(Trans::No, Trans::No, T, C, D, 1.0f, dy.data(), D, wo.data(), C, 0.0f, dctx.data(), C);

  // One (sequence, kv group) per task: the group's heads add into the same dk and dv, in a
  // fixed order. The probabilities are recomputed tile by tile from the saved logsumexp, in
  // the forward's tiles.
  const int64_t tasks = s.batch * KV;
  const int threads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic) if (tasks >= threads)
  for (int64_t task = 0; task < tasks; ++task) {
    const TileScratch tile = thread_tiles(scratch);
    causal_core_backward_group(s, task / KV, task % KV, qkv, ctx, lse, dctx, dqkv, tile);
  }
  rope_qk(s, rope, dqkv, true);
  qkv_extras_backward(s, T, extras, dqkv, extras_grads);
  // qkv = x Wqkv^T:  dWqkv += dqkv^T x,  dx = dqkv Wqkv
  gemm(Trans::Yes, Trans::No, W, D, T, 1.0f, dqkv.data(), W, x.data(), D, 1.0f, dwqkv.data(), D);
  gemm(Trans::No, Trans::No, T, D, W, 1.0f, dqkv.data(), W, wqkv.data(), D, 0.0f, dx.data(), D);
}

void attention_decode_append(const AttentionShape& s, const RopeTable& rope, int64_t pos,
                             std::span<float> qkv, std::span<float> key_cache,
                             std::span<float> value_cache) {
  const int64_t H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  for (int64_t h = 0; h < H + KV; ++h) rope.rotate(qkv.data() + h * hd, pos);
  std::copy_n(qkv.data() + H * hd, KV * hd, key_cache.data() + pos * KV * hd);
  std::copy_n(qkv.data() + (H + KV) * hd, KV * hd, value_cache.data() + pos * KV * hd);
}

namespace {

inline void decode_heads_body(const AttentionShape& s, int64_t pos, int64_t h0, int64_t h1,
                              std::span<const float> qkv, std::span<const float> key_cache,
                              std::span<const float> value_cache, std::span<float> scores,
                              std::span<float> ctx) {
  const int64_t H = s.heads, KV = s.kv_heads, hd = s.head_dim, group = H / KV, stride = KV * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  constexpr int64_t kColumns = 64;  // eight 8-wide vectors of ctx held over all positions
  for (int64_t h = h0; h < h1; ++h) {
    const float* q = qkv.data() + h * hd;
    const float* kc = key_cache.data() + h / group * hd;
    const float* vc = value_cache.data() + h / group * hd;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j <= pos; ++j) {
      // q.k in 16 lanes, then the lanes added pairwise (a scalar chain of hd adds would wait
      // on itself hd times).
      scores[j] = lane_dot(q, kc + j * stride, hd) * scale;
      m = std::max(m, scores[j]);
    }
    const float sum = exp_shifted_sum(scores.data(), scores.data(), pos + 1, m);
    for (int64_t j = 0; j <= pos; ++j) scores[j] /= sum;
    // ctx_h = sum_j p_j v_j, 64 columns at a time held in registers over all positions (eight
    // independent chains of adds; each column's sum in position order, as one column at a time
    // through memory would be).
    float* out = ctx.data() + h * hd;
    int64_t d0 = 0;
    for (; d0 + kColumns <= hd; d0 += kColumns) {
      F32x8 acc[kColumns / 8] = {}, v;
      for (int64_t j = 0; j <= pos; ++j) {
        const float p = scores[j];
        for (int64_t c = 0; c < kColumns / 8; ++c) {
          load8(v, vc + j * stride + d0 + 8 * c);
          acc[c] += p * v;
        }
      }
      std::memcpy(out + d0, acc, sizeof acc);
    }
    std::fill(out + d0, out + hd, 0.0f);
    for (int64_t j = 0; j <= pos; ++j)
      for (int64_t d = d0; d < hd; ++d) out[d] += scores[j] * vc[j * stride + d];
  }
}

// Compiled per kernel set: the q.k lanes and each ctx column's order are fixed, so every set
// gives the same bits.
MOE_KERNEL(decode_heads_kernel,
           (const AttentionShape& s, int64_t pos, int64_t h0, int64_t h1,
            std::span<const float> qkv, std::span<const float> key_cache,
            std::span<const float> value_cache, std::span<float> scores, std::span<float> ctx),
           (s, pos, h0, h1, qkv, key_cache, value_cache, scores, ctx), decode_heads_body)

}  // namespace

void attention_decode_heads(const AttentionShape& s, int64_t pos, int64_t h0, int64_t h1,
                            std::span<const float> qkv, std::span<const float> key_cache,
                            std::span<const float> value_cache, std::span<float> scores,
                            std::span<float> ctx) {
  decode_heads_kernel(s, pos, h0, h1, qkv, key_cache, value_cache, scores, ctx);
}

void attention_decode(const AttentionShape& s, const RopeTable& rope, int64_t pos,
                      std::span<float> qkv, std::span<float> key_cache,
                      std::span<float> value_cache, std::span<float> scores, std::span<float> ctx) {
  attention_decode_append(s, rope, pos, qkv, key_cache, value_cache);
  attention_decode_heads(s, pos, 0, s.heads, qkv, key_cache, value_cache, scores, ctx);
}

}  // namespace moe
