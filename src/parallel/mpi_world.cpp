#include "parallel/mpi_world.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string_view>

#include "parallel/expert_parallel.h"
#include "parallel/mpi_util.h"

namespace moe {

bool MpiWorld::launched_by_mpirun() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(name)) return true;
  return false;
}

MpiWorld::MpiWorld(int& argc, char**& argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  watchdog_ = std::make_unique<Watchdog>(rank_, size_ > 1 ? Watchdog::limit_from_environment() : 0);
}

MpiWorld::~MpiWorld() {
  watchdog_.reset();
  MPI_Finalize();
}

void MpiWorld::sum(std::span<float> values) {
  const Watchdog::Call watched(*watchdog_);
  const double t0 = now_seconds();
  MPI_Allreduce(MPI_IN_PLACE, values.data(), mpi_count(values.size(), "all-reduce"), MPI_FLOAT,
                MPI_SUM, MPI_COMM_WORLD);
  stats_.reduce_seconds += now_seconds() - t0;
}

void MpiWorld::sum(std::span<double> values) {
  const Watchdog::Call watched(*watchdog_);
  const double t0 = now_seconds();
  MPI_Allreduce(MPI_IN_PLACE, values.data(), mpi_count(values.size(), "all-reduce"), MPI_DOUBLE,
                MPI_SUM, MPI_COMM_WORLD);
  stats_.reduce_seconds += now_seconds() - t0;
}

void MpiWorld::sum(std::span<int64_t> values) {
  const Watchdog::Call watched(*watchdog_);
  const double t0 = now_seconds();
  MPI_Allreduce(MPI_IN_PLACE, values.data(), mpi_count(values.size(), "all-reduce"), MPI_INT64_T,
                MPI_SUM, MPI_COMM_WORLD);
  stats_.reduce_seconds += now_seconds() - t0;
}

void MpiWorld::gather(std::span<const float> part, std::span<float> whole) {
  const int n = mpi_count(part.size(), "gather");
  if (rank_ == 0 && whole.size() != part.size() * static_cast<size_t>(size_))
    throw Error("gather: the root's buffer must hold " + std::to_string(size_) + " parts");
  const Watchdog::Call watched(*watchdog_);
  MPI_Gather(part.data(), n, MPI_FLOAT, rank_ == 0 ? whole.data() : nullptr, n, MPI_FLOAT, 0,
             MPI_COMM_WORLD);
}

void MpiWorld::broadcast(std::string& text) {
  const Watchdog::Call watched(*watchdog_);
  int64_t length = static_cast<int64_t>(text.size());
  MPI_Bcast(&length, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  text.resize(static_cast<size_t>(length));
  MPI_Bcast(text.data(), mpi_count(text.size(), "broadcast"), MPI_CHAR, 0, MPI_COMM_WORLD);
}

ExpertExchangeFactory MpiWorld::expert_exchange(int64_t experts) {
  if (experts % size_ != 0)
    throw Error("--expert-parallel " + std::to_string(size_) + " does not divide num_experts " +
                std::to_string(experts) + " (each rank holds E/P experts)");
  return [this, experts] {
    return std::make_unique<AllToAllExchange>(rank_, size_, experts, stats_, *watchdog_);
  };
}

void MpiWorld::require_same_binary() {
  // One read of the whole file (a character iterator would crawl through a sanitizer build's
  // 100 MB).
  std::ifstream exe("/proc/self/exe", std::ios::binary | std::ios::ate);
  std::string bytes(static_cast<size_t>(std::max<std::streamoff>(0, exe.tellg())), '\0');
  exe.seekg(0);
  exe.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const std::string fingerprint =
      std::to_string(bytes.size()) + ":" + std::to_string(std::hash<std::string_view>{}(bytes));
  const std::vector<int> differ = ranks_differing_from_root(*this, fingerprint);
  if (differ.empty()) return;
  std::string list;
  for (int r : differ) list += (list.empty() ? "" : ", ") + std::to_string(r);
  throw SharedError("rank " + list + " runs another moe binary than rank 0: build once and run " +
                    "the same build (the same file) on every host");
}

void MpiWorld::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this tells the compiler so
}

}  // namespace moe
