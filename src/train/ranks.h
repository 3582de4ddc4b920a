#pragma once
// The processes of a run: one alone, or P of them with expert parallelism (tensor/collectives.h
// carries what they share). The root (rank 0) alone writes the run folder; these helpers make an
// error met by one process or by all of them end every process with one message.
#include <functional>
#include <string>

#include "model/config.h"
#include "moe/expert_exchange.h"
#include "run/train_options.h"
#include "tensor/collectives.h"
#include "tensor/error.h"

namespace moe {

// A run spread over P processes (expert parallelism): each takes 1/P of every batch (the same
// global batch, --batch-size, as one process) and holds 1/P of every MoE layer's experts; the
// root (rank 0) alone writes the run folder, which must be the same folder for every process
// (a shared file system across machines). Default: one process, nothing shared.
struct Parallelism {
  Collectives* comm = nullptr;  // null or size 1: this process alone
  // Given E, the per-layer exchange factory (throws Error when P does not divide E).
  std::function<ExpertExchangeFactory(int64_t experts)> exchange;
};

// This process's place among the run's: rank in [0, size).
struct Ranks {
  explicit Ranks(const Parallelism& p)
      : comm(p.comm && p.comm->size() > 1 ? p.comm : nullptr),
        rank(comm ? comm->rank() : 0),
        size(comm ? comm->size() : 1) {}
  Collectives* comm;  // null: one process
  int rank, size;
  bool root() const { return rank == 0; }
};

// Runs `work` on the root only; an Error there reaches every process (each throws it as a
// SharedError), so no process waits for a root that gave up.
template <typename Work>
void on_root(const Ranks& ranks, Work&& work) {
  if (!ranks.comm) return work();
  std::string error;
  if (ranks.root()) try {
      work();
    } catch (const Error& e) {
      error = e.what();
    }
  ranks.comm->broadcast(error);
  if (!error.empty()) throw SharedError(error);
}

// An error every process meets alike (the same check on the same data): under P processes a
// SharedError, so all end normally with one message from the root.
[[noreturn]] void throw_alike(const Ranks& ranks, const Error& e);

// Every process must train the same model with the same options (the same files and command
// line on every host): checked against the root's before anything runs.
void require_same_setup(const Ranks& ranks, const ModelConfig& config, const TrainOptions& o);

// What expert parallelism supports (the batch and the experts split evenly over the ranks),
// checked before anything runs.
void check_parallel_layout(const Ranks& ranks, const ModelConfig& config, const TrainOptions& o);

}  // namespace moe
