#pragma once
// ExpertExchange: the seam for expert parallelism, where a MoE layer's experts are spread over
// processes. The layer sorts its tokens' rows by expert as always (Dispatcher); plan() learns
// how many rows every process sends each expert, dispatch() sends each expert's rows to the
// process that holds it and returns the rows this process's experts take, and combine() sends
// the experts' outputs back into the layer's row order. Backward reverses both with the same
// layout: output gradients travel like the inputs (dispatch), input gradients like the outputs
// (combine). A layer without an exchange holds every expert itself (one process).
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

namespace moe {

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  // This process's experts: [first_expert(), first_expert() + local_experts()).
  virtual int64_t first_expert() const = 0;
  virtual int64_t local_experts() const = 0;

  // offsets: [E + 1] this process's rows per global expert (Dispatcher::segment_offsets).
  // Learns the rows every process sends this one's experts.
  virtual void plan(std::span<const int64_t> offsets) = 0;
  // Rows this process's experts take, grouped by local expert and, within one expert, by
  // sending process in rank order: offsets [local_experts() + 1].
  virtual int64_t local_rows() const = 0;
  virtual std::span<const int64_t> local_offsets() const = 0;

  // rows: [n, D] grouped by global expert -> local: [local_rows(), D] (the last plan's layout)
  virtual void dispatch(std::span<const float> rows, int64_t D, std::span<float> local) = 0;
  // local: [local_rows(), D] -> rows: [n, D] back in the layer's order
  virtual void combine(std::span<const float> local, int64_t D, std::span<float> rows) = 0;

  // Sums per-expert loads over all processes, in place: load [E] (the bias update's global
  // load).
  virtual void sum_loads(std::span<int64_t> load) = 0;
  // Sums scores over all processes, in place: scores [n] (expert choice's threshold update).
  virtual void sum_scores(std::span<double> scores) = 0;
};

// Makes one exchange per MoE layer (each keeps its own layout between forward and backward).
using ExpertExchangeFactory = std::function<std::unique_ptr<ExpertExchange>()>;

}  // namespace moe
