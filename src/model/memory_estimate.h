#pragma once
// What a command will hold in memory, estimated from the model config and the batch before
// anything is allocated, so that a run too large for the machine is refused in one line
// (require_memory) instead of being killed by the kernel half-way. Training today; the
// inference commands can add their estimate beside it (the parts are the same kinds).
//
// The training estimate counts, per process:
//   parameters, gradients, AdamW's two moments     4 floats per local parameter
//   activations   what the forward saves for backward, every block, at batch x seq tokens
//   logits        [tokens, vocab] (their gradient is written in place)
//   scratch       backward buffers and the per-thread kernel scratch
//   checkpoint    the copies a checkpoint save (or a resume's load) makes of the state
//   runtime       the program, its libraries, OpenBLAS and OpenMP buffers
//   headroom      a fifth of all the above: allocator slack, the token-file pages a batch
//                 touches, and whatever else the count misses
// Apart: files mapped read-only (the kernel can drop their pages), and the address space
// reserved but never touched (malloc's per-thread arenas, stacks), which only ulimit -v counts.
// Calibrated against peak RSS of real `moe train` runs (docs/MEMORY.md): without the headroom
// the count lands within 3% of the measured peak; with it, 15-25% above.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "tensor/memory_available.h"

namespace moe {

struct MemoryEstimate {
  uint64_t parameters = 0, gradients = 0, optimizer_state = 0;
  uint64_t activations = 0, kv_cache = 0, logits = 0, scratch = 0, checkpoint = 0, runtime = 0,
           headroom = 0;
  uint64_t mapped = 0;         // read-only mapped files, not in total()
  uint64_t address_space = 0;  // reserved, never touched: counts only under ulimit -v / -d

  uint64_t total() const;
  // The parts in the order above, with their names ("parameters", ...), zero parts left out.
  std::vector<std::pair<std::string, uint64_t>> parts() const;
};

struct TrainingShape {
  int64_t batch = 0;    // sequences per micro-batch, over all processes (--batch-size)
  int64_t seq = 0;      // tokens per sequence
  int threads = 1;      // OpenMP threads of each process
  int processes = 1;    // expert parallelism: each holds E/P experts and batch/P sequences
  bool resume = false;  // a resume reads the checkpoint whole before training
};

// Peak memory of one training process (the root, under expert parallelism) of `config` at
// `shape`. Saturates at UINT64_MAX rather than wrapping.
MemoryEstimate estimate_training_memory(const ModelConfig& config, const TrainingShape& shape);

// Peak memory of `moe eval` on `config`: the fp32 model, and one evaluation forward at
// shape.batch x shape.seq (what it keeps per token is what a training forward saves); no
// gradients, no optimizer state.
MemoryEstimate estimate_evaluation_memory(const ModelConfig& config, const TrainingShape& shape);

struct InferenceShape {
  int64_t positions = 0;  // the KV cache's length: prompt plus generated tokens
  int64_t prompt = 0;     // tokens of the prefill, one batch
  int threads = 1;
  int64_t cached_experts = 0;        // --expert-cache: experts per MoE layer held in RAM (0: none)
  uint64_t cached_expert_bytes = 0;  // one cached expert's bytes as stored (0: counted as fp32)
  uint64_t mapped = 0;               // bytes of the weight files mapped read-only
  uint64_t resident_weights = 0;     // weights made in memory (a random model, a bf16 rounding)
};

// Peak memory of the inference engine (generate, logits, bench decode) beyond its mapped
// weights: the KV cache, the prefill's activations, the logits, the expert cache's experts
// (at their stored size where the caller knows it, else as fp32, an upper bound) and the runtime;
// the mapped files are counted apart.
MemoryEstimate estimate_inference_memory(const ModelConfig& config, const InferenceShape& shape);

// Peak memory of `moe bench layer` / `bench ep`: `copies` MoE layers of `config` (their
// weights and gradients; a process holds E/processes experts of each) run forward and backward
// over `tokens` rows, with the benchmark's input, output and gradient tensors.
MemoryEstimate estimate_moe_layer_memory(const MoeConfig& config, int64_t tokens, int threads,
                                         int processes = 1, int copies = 1);

// The program's own memory before any model (binary, libraries, thread pools): part of
// every estimate.
uint64_t runtime_memory(int threads);

// "1.2 GiB: parameters 13.0 MiB, gradients 13.0 MiB, ..." on one line.
std::string describe_memory_estimate(const MemoryEstimate& estimate);

// Whether `estimate` fits under every limit of `available` (address space counted under the
// limits that count it).
bool memory_fits(const MemoryEstimate& estimate, const AvailableMemory& available);

// Throws OutOfMemory ("out of memory: <what> needs 23.8 GiB, but 7.6 GiB is available
// (MemAvailable); <advice>") when `estimate` does not fit.
void require_memory(const MemoryEstimate& estimate, const std::string& what,
                    const AvailableMemory& available, const std::string& advice);

}  // namespace moe
