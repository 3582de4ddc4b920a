#pragma once
// Dispatcher: sorts a RoutingPlan's assignments by expert (a stable counting sort), applies
// the capacity and drop policy, gathers token rows into contiguous per-expert segments, and
// scatters the experts' outputs back weighted by their gates (MegaBlocks' dropless layout:
// no padding to capacity).
#include <cstdint>
#include <span>
#include <vector>

#include "moe/config.h"
#include "moe/router.h"

namespace moe {

class Dispatcher {
 public:
  // Builds the permutation. capacity < 0: dropless. With groups > 1 (token choice), the
  // tokens split into that many equal groups and capacity applies per group and expert.
  void plan(const RoutingPlan& plan, int64_t capacity, DropPolicy policy, int64_t groups = 1);

  // x: [T, D] -> xp: [kept, D], rows grouped by expert in segment order.
  void permute(std::span<const float> x, int64_t D, std::span<float> xp) const;
  // yp: [kept, D], gate: [A] -> y: [T, D] overwritten; y_t = sum over kept a of gate_a yp_a.
  void combine(std::span<const float> yp, std::span<const float> gate, int64_t D,
               std::span<float> y) const;
  // dy: [T, D] -> dyp: [kept, D] = gate_a dy_t;  dgate: [A] = <dy_t, yp_a> (0 when dropped)
  void combine_backward(std::span<const float> dy, std::span<const float> yp,
                        std::span<const float> gate, int64_t D, std::span<float> dyp,
                        std::span<float> dgate) const;
  // dxp: [kept, D] -> dx: [T, D] overwritten (sum over a token's kept rows).
  void permute_backward(std::span<const float> dxp, int64_t D, std::span<float> dx) const;

  int64_t kept() const { return static_cast<int64_t>(row_assignment_.size()); }
  // Row offsets of each expert's segment in xp: [E + 1]
  std::span<const int64_t> segment_offsets() const { return segment_offsets_; }
  // Assignments per expert before dropping: [E]
  std::span<const int64_t> routed_counts() const { return routed_counts_; }
  int64_t dropped() const { return assignments_ - kept(); }
  // Tokens with no kept assignment: every pick dropped, or (expert choice) never picked.
  int64_t tokens_without_rows() const;
  // The assignment behind each permuted row: [kept]
  std::span<const int32_t> kept_assignments() const { return row_assignment_; }

 private:
  int64_t tokens_ = 0;
  int64_t assignments_ = 0;
  std::vector<int32_t> assignment_token_;  // [A]
  std::vector<int64_t> routed_counts_;     // [E]
  std::vector<int64_t> segment_offsets_;   // [E + 1]
  std::vector<int32_t> row_assignment_;    // [kept] assignment behind each xp row
  std::vector<int32_t> row_token_;         // [kept]
  std::vector<int64_t> token_offsets_;     // [T + 1] CSR: a token's rows in token_rows_
  std::vector<int32_t> token_rows_;        // [kept]
  std::vector<int32_t> sorted_;            // [A] scratch: assignments sorted by expert
  std::vector<int64_t> cursor_;            // [max(E, T)] scratch
};

}  // namespace moe
