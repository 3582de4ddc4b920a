#pragma once
// MpiWorld: MPI for the life of the object (MPI_Init_thread, MPI_Finalize) and the
// Collectives of all the job's processes (MPI_COMM_WORLD). Only the main thread calls MPI
// (MPI_THREAD_FUNNELED): OpenMP regions never communicate.
#include <cstdint>
#include <memory>
#include <string>

#include "moe/expert_exchange.h"
#include "parallel/watchdog.h"
#include "tensor/collectives.h"

namespace moe {

class MpiWorld final : public Collectives {
 public:
  // Whether mpirun started this process (Open MPI's or a PMI launcher's environment); a
  // process started alone never initialises MPI.
  static bool launched_by_mpirun();

  // With more than one process, a watchdog ends this one when a collective call waits longer
  // than MOE_MPI_TIMEOUT seconds (Watchdog::kDefaultLimit; 0 = never).
  MpiWorld(int& argc, char**& argv);
  ~MpiWorld() override;
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(std::span<float> values) override;
  void sum(std::span<double> values) override;
  void sum(std::span<int64_t> values) override;
  void gather(std::span<const float> part, std::span<float> whole) override;
  void broadcast(std::string& text) override;
  const CommStats& stats() const override { return stats_; }

  // One all-to-all token exchange per MoE layer, each rank holding E / size() contiguous
  // experts (rank r: [r E/P, (r+1) E/P)). Throws Error when size() does not divide experts.
  ExpertExchangeFactory expert_exchange(int64_t experts);

  // Throws SharedError on every process when a rank runs another executable than rank 0's
  // (compared by content): the same build must run everywhere.
  void require_same_binary();

  // Ends every process of the job at once: for an error only this process saw (the others
  // would wait for it in their next collective).
  [[noreturn]] void abort(int code);

 private:
  int rank_ = 0, size_ = 1;
  CommStats stats_;
  std::unique_ptr<Watchdog> watchdog_;  // every collective call under MOE_MPI_TIMEOUT
};

}  // namespace moe
