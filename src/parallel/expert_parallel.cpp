#include "parallel/expert_parallel.h"

#include <mpi.h>

#include <algorithm>

#include "parallel/mpi_util.h"
#include "tensor/error.h"

namespace moe {

AllToAllExchange::AllToAllExchange(int rank, int ranks, int64_t experts, CommStats& stats,
                                   Watchdog& watchdog)
    : rank_(rank),
      ranks_(ranks),
      experts_(experts),
      local_(experts / ranks),
      stats_(stats),
      watchdog_(watchdog),
      send_counts_(experts),
      recv_counts_(experts),
      send_rows_(ranks),
      send_row_offsets_(ranks),
      recv_rows_(ranks),
      recv_row_offsets_(ranks),
      local_offsets_(experts / ranks + 1, 0),
      send_elems_(ranks),
      send_displs_(ranks),
      recv_elems_(ranks),
      recv_displs_(ranks) {
  require(ranks > 0 && experts % ranks == 0, "expert exchange: ranks must divide the experts");
}

void AllToAllExchange::plan(std::span<const int64_t> offsets) {
  require(static_cast<int64_t>(offsets.size()) == experts_ + 1,
          "expert exchange: offsets must hold E + 1 values");
  for (int64_t e = 0; e < experts_; ++e) send_counts_[e] = offsets[e + 1] - offsets[e];
  // Counts first: rank p learns how many rows each sender has for each of its experts.
  const Watchdog::Call watched(watchdog_);
  const double t0 = now_seconds();
  MPI_Alltoall(send_counts_.data(), static_cast<int>(local_), MPI_INT64_T, recv_counts_.data(),
               static_cast<int>(local_), MPI_INT64_T, MPI_COMM_WORLD);
  stats_.exchange_seconds += now_seconds() - t0;
  stats_.bytes_sent += static_cast<int64_t>(sizeof(int64_t)) * local_ * (ranks_ - 1);
  for (int p = 0; p < ranks_; ++p) {
    send_row_offsets_[p] = offsets[p * local_];
    send_rows_[p] = offsets[(p + 1) * local_] - offsets[p * local_];
    recv_rows_[p] = 0;
    for (int64_t e = 0; e < local_; ++e) recv_rows_[p] += recv_counts_[p * local_ + e];
    recv_row_offsets_[p] = p == 0 ? 0 : recv_row_offsets_[p - 1] + recv_rows_[p - 1];
  }
  for (int64_t e = 0; e < local_; ++e) {
    local_offsets_[e + 1] = local_offsets_[e];
    for (int p = 0; p < ranks_; ++p) local_offsets_[e + 1] += recv_counts_[p * local_ + e];
  }
}

void AllToAllExchange::regroup(std::span<const float> from, std::span<float> to, int64_t D,
                               bool to_local) const {
  std::vector<int64_t> cursor(ranks_);
  for (int p = 0; p < ranks_; ++p) cursor[p] = recv_row_offsets_[p];
  int64_t local_row = 0;
  for (int64_t e = 0; e < local_; ++e)
    for (int p = 0; p < ranks_; ++p) {
      const int64_t n = recv_counts_[p * local_ + e] * D;
      const int64_t received = cursor[p] * D, local = local_row * D;
      if (to_local)
        std::copy(from.begin() + received, from.begin() + received + n, to.begin() + local);
      else
        std::copy(from.begin() + local, from.begin() + local + n, to.begin() + received);
      cursor[p] += recv_counts_[p * local_ + e];
      local_row += recv_counts_[p * local_ + e];
    }
}

void AllToAllExchange::dispatch(std::span<const float> rows, int64_t D, std::span<float> local) {
  int64_t sent = 0;
  for (int p = 0; p < ranks_; ++p) {
    send_elems_[p] = mpi_count(static_cast<size_t>(send_rows_[p] * D), "expert exchange");
    send_displs_[p] = mpi_count(static_cast<size_t>(send_row_offsets_[p] * D), "expert exchange");
    recv_elems_[p] = mpi_count(static_cast<size_t>(recv_rows_[p] * D), "expert exchange");
    recv_displs_[p] = mpi_count(static_cast<size_t>(recv_row_offsets_[p] * D), "expert exchange");
    if (p != rank_) sent += send_rows_[p] * D;
  }
  buffer_.resize(static_cast<size_t>(local_rows() * D));
  const Watchdog::Call watched(watchdog_);
  const double t0 = now_seconds();
  MPI_Alltoallv(rows.data(), send_elems_.data(), send_displs_.data(), MPI_FLOAT, buffer_.data(),
                recv_elems_.data(), recv_displs_.data(), MPI_FLOAT, MPI_COMM_WORLD);
  stats_.exchange_seconds += now_seconds() - t0;
  stats_.bytes_sent += sent * static_cast<int64_t>(sizeof(float));
  regroup(buffer_, local, D, true);
}

void AllToAllExchange::combine(std::span<const float> local, int64_t D, std::span<float> rows) {
  // The reverse of dispatch: what came from rank p goes back to it, into the rows it sent.
  buffer_.resize(static_cast<size_t>(local_rows() * D));
  regroup(local, buffer_, D, false);
  int64_t sent = 0;
  for (int p = 0; p < ranks_; ++p)
    if (p != rank_) sent += recv_rows_[p] * D;
  const Watchdog::Call watched(watchdog_);
  const double t0 = now_seconds();
  MPI_Alltoallv(buffer_.data(), recv_elems_.data(), recv_displs_.data(), MPI_FLOAT, rows.data(),
                send_elems_.data(), send_displs_.data(), MPI_FLOAT, MPI_COMM_WORLD);
  stats_.exchange_seconds += now_seconds() - t0;
  stats_.bytes_sent += sent * static_cast<int64_t>(sizeof(float));
}

void AllToAllExchange::sum_loads(std::span<int64_t> load) {
  const Watchdog::Call watched(watchdog_);
  MPI_Allreduce(MPI_IN_PLACE, load.data(), static_cast<int>(load.size()), MPI_INT64_T, MPI_SUM,
                MPI_COMM_WORLD);
}

void AllToAllExchange::sum_scores(std::span<double> scores) {
  const Watchdog::Call watched(watchdog_);
  MPI_Allreduce(MPI_IN_PLACE, scores.data(), static_cast<int>(scores.size()), MPI_DOUBLE, MPI_SUM,
                MPI_COMM_WORLD);
}

}  // namespace moe
