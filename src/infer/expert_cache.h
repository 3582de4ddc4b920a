#pragma once
// ExpertCache: the routed experts of a checkpoint kept in slower memory (its files on storage)
// with at most N of each layer's experts in RAM, as Mixtral-offloading and pre-gated MoE run
// models larger than memory. An expert not resident is read from its file when a token routes
// to it, bypassing the page cache (O_DIRECT; where the file system refuses it, a plain read
// followed by POSIX_FADV_DONTNEED), so every miss costs a real read.
//
// Eviction per layer: LRU (the expert used longest ago) or LFU (the one used least often so
// far, ties to the least recent). prefetch() loads a layer's likely experts on a background
// thread while the layer before it computes; the layer waits for it before it runs.
#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tensor/mapped_safetensors.h"

namespace moe {

enum class CachePolicy { Lru, Lfu };

// Where a tensor's bytes lie: a file and a byte range, with the dtype and shape to view them.
struct TensorLocation {
  std::string path;
  uint64_t offset = 0, bytes = 0;
  TensorDtype dtype = TensorDtype::F32;
  Shape shape;
  std::optional<QuantType> quant;  // ggml's blocks (a GGUF file's tensor); dtype then unused
};

// The three matrices of one SwiGLU expert: gate [F, D], up [F, D], down [D, F].
struct ExpertLocation {
  TensorLocation gate, up, down;
};

// The matrices of a SwiGLU expert as the forward reads them: gate [F, D], up [F, D],
// down [D, F]; views of a mapping or of a cache slot.
struct ExpertWeights {
  WeightView gate, up, down;
};

struct ExpertCacheStats {
  int64_t hits = 0, misses = 0;  // lookups by the forward pass
  int64_t prefetched = 0;        // experts loaded ahead by prefetch()
  int64_t bytes_read = 0;        // from storage, all loads
  bool direct_io = true;         // false where O_DIRECT was refused
  int64_t prefetch_used = 0;     // prefetched experts a lookup then found (before eviction)
  double hit_rate() const { return hits + misses ? double(hits) / double(hits + misses) : 0.0; }
  // Of the experts the forward pass needed from storage, the share prefetch had brought in.
  double prefetch_recall() const {
    return prefetch_used + misses ? double(prefetch_used) / double(prefetch_used + misses) : 0.0;
  }
  // Of the experts prefetch read, the share that a lookup then used.
  double prefetch_precision() const {
    return prefetched ? double(prefetch_used) / double(prefetched) : 0.0;
  }
};

class ExpertCache {
 public:
  // experts[layer][e]: where each expert lives. capacity: experts per layer held in RAM, at
  // least 1 (at most E: then every expert stays once read).
  ExpertCache(std::vector<std::vector<ExpertLocation>> experts, int64_t capacity,
              CachePolicy policy);
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // Expert e of `layer`, read from storage first if it is not resident. Valid until the next
  // get() or prefetch() of the same layer.
  ExpertWeights get(int64_t layer, int64_t expert);
  // Starts loading `experts` of `layer` in the background (those not resident, at most
  // capacity of them); the next get() of that layer waits for it.
  void prefetch(int64_t layer, std::span<const int32_t> experts);

  ExpertCacheStats stats() const;
  int64_t capacity() const { return capacity_; }
  // One slot's bytes: the largest expert's gate, up and down as stored, each aligned for O_DIRECT.
  uint64_t slot_bytes() const { return slot_bytes_; }

 private:
  struct Slot {
    int64_t expert = -1;             // resident expert, -1 = empty
    bool reserved = false;           // a prefetch is filling it
    bool prefetched_unused = false;  // filled by prefetch, not yet looked up
    uint64_t last_use = 0;
    std::shared_ptr<std::byte> buffer;  // aligned for O_DIRECT; gate, up, down back to back
    ExpertWeights views;
  };
  struct Layer {
    std::vector<ExpertLocation> experts;
    std::vector<Slot> slots;
    std::vector<int64_t> uses;  // per expert, for LFU
    std::future<void> pending;  // a prefetch in flight
  };

  void wait(Layer& layer);
  Slot& victim(Layer& layer, std::span<const int64_t> keep);
  void load(Layer& layer, Slot& slot, int64_t expert);  // reads the expert into the slot
  const std::byte* read_tensor(const TensorLocation& where, std::byte* into);

  std::vector<Layer> layers_;
  int64_t capacity_;
  CachePolicy policy_;
  uint64_t clock_ = 0;
  // Counted by the forward pass and the prefetch thread alike.
  std::atomic<int64_t> hits_{0}, misses_{0}, prefetched_{0}, bytes_read_{0}, prefetch_used_{0};
  bool direct_io_ = true;
  std::vector<std::pair<std::string, int>> files_;  // descriptors, all opened up front
  uint64_t slot_bytes_ = 0;
};

}  // namespace moe
