#include "moe/dispatcher.h"

#include <algorithm>
#include <cstring>

#include "tensor/error.h"

namespace moe {

void Dispatcher::plan(const RoutingPlan& plan, int64_t capacity, DropPolicy policy,
                      int64_t groups) {
  const int64_t E = plan.experts, A = plan.assignments();
  tokens_ = plan.tokens;
  assignments_ = A;
  assignment_token_.assign(plan.token.begin(), plan.token.end());
  require(groups >= 1 && tokens_ % groups == 0, "dispatcher: groups must divide the tokens");

  // Stable counting sort of assignments by expert: within an expert, assignment order, which
  // for token choice is token order (what the `position` policy keeps first).
  routed_counts_.assign(E, 0);
  for (int64_t a = 0; a < A; ++a) {
    const int32_t e = plan.expert[a];
    if (e < 0 || e >= E)
      throw Error("routing plan names expert " + std::to_string(e) + " of " + std::to_string(E));
    ++routed_counts_[e];
  }
  cursor_.assign(std::max(E, tokens_) + 1, 0);
  for (int64_t e = 0; e < E; ++e) cursor_[e + 1] = cursor_[e] + routed_counts_[e];
  sorted_.resize(A);
  for (int64_t a = 0; a < A; ++a) sorted_[cursor_[plan.expert[a]]++] = static_cast<int32_t>(a);

  // Capacity: keep at most `capacity` per expert (and group), by position or by highest gate.
  // Token order within an expert's run makes each group's assignments one contiguous part.
  const int64_t group_tokens = tokens_ / groups;
  segment_offsets_.assign(E + 1, 0);
  row_assignment_.clear();
  int64_t begin = 0;
  for (int64_t e = 0; e < E; ++e) {
    const auto run_end = sorted_.begin() + begin + routed_counts_[e];
    for (auto first = sorted_.begin() + begin; first != run_end;) {
      const int64_t group = plan.token[*first] / group_tokens;
      auto last = std::find_if(first, run_end,
                               [&](int32_t a) { return plan.token[a] / group_tokens != group; });
      const int64_t n = last - first;
      auto kept_end = last;
      if (capacity >= 0 && n > capacity) {
        if (policy == DropPolicy::Probs) {
          // Highest gate first, earlier assignment on ties: a total order, so no stable sort
          // (and no temporary buffer) is needed.
          std::sort(first, last, [&plan](int32_t a, int32_t b) {
            return plan.gate[a] > plan.gate[b] || (plan.gate[a] == plan.gate[b] && a < b);
          });
          std::sort(first, first + capacity);  // back to token order among the kept
        }
        kept_end = first + capacity;
      }
      row_assignment_.insert(row_assignment_.end(), first, kept_end);
      first = last;
    }
    segment_offsets_[e + 1] = static_cast<int64_t>(row_assignment_.size());
    begin += routed_counts_[e];
  }

  // Token -> rows CSR, so combine and permute_backward run per token without atomics.
  const int64_t kept_rows = kept();
  row_token_.resize(kept_rows);
  std::fill(cursor_.begin(), cursor_.end(), 0);
  for (int64_t r = 0; r < kept_rows; ++r) {
    row_token_[r] = plan.token[row_assignment_[r]];
    ++cursor_[row_token_[r]];
  }
  token_offsets_.assign(tokens_ + 1, 0);
  for (int64_t t = 0; t < tokens_; ++t) token_offsets_[t + 1] = token_offsets_[t] + cursor_[t];
  std::copy(token_offsets_.begin(), token_offsets_.end() - 1, cursor_.begin());
  token_rows_.resize(kept_rows);
  for (int64_t r = 0; r < kept_rows; ++r)
    token_rows_[cursor_[row_token_[r]]++] = static_cast<int32_t>(r);
}

int64_t Dispatcher::tokens_without_rows() const {
  int64_t n = 0;
  for (int64_t t = 0; t < tokens_; ++t) n += token_offsets_[t + 1] == token_offsets_[t];
  return n;
}

void Dispatcher::permute(std::span<const float> x, int64_t D, std::span<float> xp) const {
  const int64_t n = kept();
#pragma omp parallel for schedule(static) if (n * D > 65536)
  for (int64_t r = 0; r < n; ++r)
    std::memcpy(xp.data() + r * D, x.data() + static_cast<int64_t>(row_token_[r]) * D,
                sizeof(float) * D);
}

void Dispatcher::combine(std::span<const float> yp, std::span<const float> gate, int64_t D,
                         std::span<float> y) const {
#pragma omp parallel for schedule(static) if (tokens_ * D > 65536)
  for (int64_t t = 0; t < tokens_; ++t) {
    float* out = y.data() + t * D;
    std::fill(out, out + D, 0.0f);
    for (int64_t i = token_offsets_[t]; i < token_offsets_[t + 1]; ++i) {
      const int64_t r = token_rows_[i];
      const float g = gate[row_assignment_[r]];
      const float* src = yp.data() + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += g * src[d];
    }
  }
}

void Dispatcher::combine_backward(std::span<const float> dy, std::span<const float> yp,
                                  std::span<const float> gate, int64_t D, std::span<float> dyp,
                                  std::span<float> dgate) const {
  std::fill(dgate.begin(), dgate.begin() + assignments_, 0.0f);
  const int64_t n = kept();
#pragma omp parallel for schedule(static) if (n * D > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const int32_t a = row_assignment_[r];
    const float* g_out = dy.data() + static_cast<int64_t>(row_token_[r]) * D;
    const float* out = yp.data() + r * D;
    float* d = dyp.data() + r * D;
    const float g = gate[a];
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < D; ++i) {
      d[i] = g * g_out[i];
      dot += g_out[i] * out[i];
    }
    dgate[a] = dot;
  }
}

void Dispatcher::permute_backward(std::span<const float> dxp, int64_t D,
                                  std::span<float> dx) const {
#pragma omp parallel for schedule(static) if (tokens_ * D > 65536)
  for (int64_t t = 0; t < tokens_; ++t) {
    float* out = dx.data() + t * D;
    std::fill(out, out + D, 0.0f);
    for (int64_t i = token_offsets_[t]; i < token_offsets_[t + 1]; ++i) {
      const float* src = dxp.data() + static_cast<int64_t>(token_rows_[i]) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += src[d];
    }
  }
}

}  // namespace moe
