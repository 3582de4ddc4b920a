#pragma once
// The expert-parallel token exchange: ExpertExchange on MPI_Alltoallv. Each rank holds E/P
// contiguous experts. plan() swaps per-expert row counts (MPI_Alltoall), dispatch() and
// combine() swap the rows (MPI_Alltoallv), and the received blocks, which arrive grouped by
// sending rank, are regrouped by local expert so each expert's rows are contiguous (sender
// 0's first, as one process with capacity_groups = P orders them).
#include <cstdint>
#include <span>
#include <vector>

#include "moe/expert_exchange.h"
#include "parallel/watchdog.h"
#include "tensor/collectives.h"

namespace moe {

class AllToAllExchange final : public ExpertExchange {
 public:
  // rank, ranks: this process and the job's size; stats: where the exchange adds its bytes
  // and seconds; watchdog: watches every exchange. ranks must divide experts.
  AllToAllExchange(int rank, int ranks, int64_t experts, CommStats& stats, Watchdog& watchdog);

  int64_t first_expert() const override { return rank_ * local_; }
  int64_t local_experts() const override { return local_; }
  void plan(std::span<const int64_t> offsets) override;
  int64_t local_rows() const override { return local_offsets_.back(); }
  std::span<const int64_t> local_offsets() const override { return local_offsets_; }
  void dispatch(std::span<const float> rows, int64_t D, std::span<float> local) override;
  void combine(std::span<const float> local, int64_t D, std::span<float> rows) override;
  void sum_loads(std::span<int64_t> load) override;
  void sum_scores(std::span<double> scores) override;

 private:
  // Copies between the received layout ([sender][local expert]) and the local one
  // ([local expert][sender]); to_local picks the direction.
  void regroup(std::span<const float> from, std::span<float> to, int64_t D, bool to_local) const;

  int rank_, ranks_;
  int64_t experts_, local_;
  CommStats& stats_;
  Watchdog& watchdog_;
  std::vector<int64_t> send_counts_;  // [E] rows this rank sends each expert
  std::vector<int64_t> recv_counts_;  // [P * E_local] rows from sender p for local expert e
  std::vector<int64_t> send_rows_, send_row_offsets_;  // [P] per destination rank
  std::vector<int64_t> recv_rows_, recv_row_offsets_;  // [P] per sending rank
  std::vector<int64_t> local_offsets_;                 // [E_local + 1]
  std::vector<int> send_elems_, send_displs_, recv_elems_, recv_displs_;  // [P] in floats
  std::vector<float> buffer_;  // [local rows, D] rows in the received layout
};

}  // namespace moe
