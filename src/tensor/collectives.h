#pragma once
// Collectives: what a run spread over several processes (expert parallelism, parallel/) needs
// besides the MoE layers' expert exchange: sums across processes, gathering shards to process
// 0 (the root, which writes the run folder) and broadcasting from it. The trainer calls them
// through this interface; parallel/ implements it on MPI. Every process must make the same calls
// in the same order.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace moe {

// Communication counted since the start: bytes this process sent to others and seconds spent
// in the token exchange and in the other collectives.
struct CommStats {
  int64_t bytes_sent = 0;
  double exchange_seconds = 0;
  double reduce_seconds = 0;
};

class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: every process ends with the element-wise sum over all processes.
  virtual void sum(std::span<float> values) = 0;
  virtual void sum(std::span<double> values) = 0;
  virtual void sum(std::span<int64_t> values) = 0;
  // part: this process's block (the same size on every process) -> whole: [size() * part]
  // blocks in rank order, on the root only (ignored elsewhere).
  virtual void gather(std::span<const float> part, std::span<float> whole) = 0;
  // The root's text on every process.
  virtual void broadcast(std::string& text) = 0;

  virtual const CommStats& stats() const = 0;
};

// The ranks whose `text` differs from the root's (none when every process agrees): a check
// that every process runs the same binary, config and options.
inline std::vector<int> ranks_differing_from_root(Collectives& comm, const std::string& text) {
  std::string root_text = text;
  comm.broadcast(root_text);
  std::vector<int64_t> differs(static_cast<size_t>(comm.size()), 0);
  differs[static_cast<size_t>(comm.rank())] = root_text != text;
  comm.sum(differs);
  std::vector<int> ranks;
  for (int r = 0; r < comm.size(); ++r)
    if (differs[static_cast<size_t>(r)]) ranks.push_back(r);
  return ranks;
}

// An error every process raised alike (the same check on the same data, or the root's error
// broadcast), so each can end normally; any other error ends the whole job.
class SharedError : public Error {
 public:
  explicit SharedError(const std::string& what) : Error(what) {}
};

}  // namespace moe
