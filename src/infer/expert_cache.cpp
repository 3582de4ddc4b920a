#include "infer/expert_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "tensor/error.h"

namespace moe {
namespace {

// O_DIRECT wants the buffer, the file offset and the length aligned to the device's block:
// 4096 covers every common one.
constexpr uint64_t kAlign = 4096;

uint64_t align_down(uint64_t v) {
  return v / kAlign * kAlign;
}
uint64_t align_up(uint64_t v) {
  return (v + kAlign - 1) / kAlign * kAlign;
}
uint64_t aligned_span(const TensorLocation& t) {
  return align_up(t.offset + t.bytes) - align_down(t.offset);
}

}  // namespace

ExpertCache::ExpertCache(std::vector<std::vector<ExpertLocation>> experts, int64_t capacity,
                         CachePolicy policy)
    : capacity_(capacity), policy_(policy) {
  require(capacity >= 1, "--expert-cache must keep at least 1 expert per layer");
  for (const auto& layer : experts)
    for (const ExpertLocation& e : layer) {
      slot_bytes_ =
          std::max(slot_bytes_, aligned_span(e.gate) + aligned_span(e.up) + aligned_span(e.down));
      for (const TensorLocation* t : {&e.gate, &e.up, &e.down}) {
        const bool known = std::any_of(files_.begin(), files_.end(),
                                       [&](const auto& f) { return f.first == t->path; });
        if (known) continue;
        int fd = ::open(t->path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (fd < 0 && errno == EINVAL) {  // a file system without O_DIRECT (tmpfs)
          direct_io_ = false;
          fd = ::open(t->path.c_str(), O_RDONLY | O_CLOEXEC);
        }
        require(fd >= 0, t->path + ": cannot open: " + std::strerror(errno));
        files_.emplace_back(t->path, fd);
      }
    }
  for (auto& locations : experts) {
    Layer layer;
    const int64_t E = static_cast<int64_t>(locations.size());
    layer.experts = std::move(locations);
    layer.uses.assign(static_cast<size_t>(E), 0);
    layer.slots.resize(static_cast<size_t>(std::min(capacity, E)));
    for (Slot& slot : layer.slots) {
      void* memory = std::aligned_alloc(kAlign, slot_bytes_);
      if (!memory) throw OutOfMemory("expert cache slot", slot_bytes_);
      slot.buffer = std::shared_ptr<std::byte>(static_cast<std::byte*>(memory), std::free);
    }
    layers_.push_back(std::move(layer));
  }
}

ExpertCache::~ExpertCache() {
  for (Layer& layer : layers_)
    if (layer.pending.valid()) layer.pending.wait();
  for (const auto& [path, fd] : files_) ::close(fd);
}

ExpertCacheStats ExpertCache::stats() const {
  return ExpertCacheStats{hits_.load(),       misses_.load(), prefetched_.load(),
                          bytes_read_.load(), direct_io_,     prefetch_used_.load()};
}

void ExpertCache::wait(Layer& layer) {
  if (layer.pending.valid()) layer.pending.get();  // rethrows a failed read
}

const std::byte* ExpertCache::read_tensor(const TensorLocation& where, std::byte* into) {
  const auto it = std::find_if(files_.begin(), files_.end(),
                               [&](const auto& f) { return f.first == where.path; });
  const int fd = it->second;
  const uint64_t start = align_down(where.offset), length = aligned_span(where);
  const uint64_t needed = where.offset + where.bytes - start;  // the file may end before length
  uint64_t done = 0;
  while (done < needed) {
    const ssize_t got = ::pread(fd, into + done, length - done, static_cast<off_t>(start + done));
    if (got < 0 && errno == EINTR) continue;
    require(got > 0, where.path + ": reading an expert failed: " +
                         (got < 0 ? std::strerror(errno) : "the file ends early"));
    done += static_cast<uint64_t>(got);
  }
  if (!direct_io_)  // no O_DIRECT: drop the pages so the next miss reads storage again
    ::posix_fadvise(fd, static_cast<off_t>(start), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  bytes_read_ += static_cast<int64_t>(where.bytes);
  return into + (where.offset - start);
}

void ExpertCache::load(Layer& layer, Slot& slot, int64_t expert) {
  slot.expert = -1;  // empty until the read succeeds
  const ExpertLocation& e = layer.experts[static_cast<size_t>(expert)];
  std::byte* at = slot.buffer.get();
  const auto place = [&](const TensorLocation& t) {
    const std::byte* data = read_tensor(t, at);
    at += aligned_span(t);
    return WeightView{t.dtype, t.shape, data, t.quant};
  };
  slot.views.gate = place(e.gate);
  slot.views.up = place(e.up);
  slot.views.down = place(e.down);
  slot.expert = expert;
  slot.reserved = false;
  slot.prefetched_unused = false;
}

ExpertCache::Slot& ExpertCache::victim(Layer& layer, std::span<const int64_t> keep) {
  Slot* best = nullptr;
  for (Slot& s : layer.slots) {
    if (s.reserved) continue;
    if (s.expert >= 0 && std::find(keep.begin(), keep.end(), s.expert) != keep.end()) continue;
    if (s.expert < 0) return s;  // an empty slot first
    if (!best) {
      best = &s;
      continue;
    }
    const auto key = [&](const Slot& x) {
      const int64_t uses =
          policy_ == CachePolicy::Lfu ? layer.uses[static_cast<size_t>(x.expert)] : 0;
      return std::make_pair(uses, x.last_use);
    };
    if (key(s) < key(*best)) best = &s;
  }
  require(best != nullptr, "expert cache: no slot to evict");
  return *best;
}

ExpertWeights ExpertCache::get(int64_t layer_index, int64_t expert) {
  Layer& layer = layers_.at(static_cast<size_t>(layer_index));
  wait(layer);
  ++layer.uses[static_cast<size_t>(expert)];
  ++clock_;
  for (Slot& s : layer.slots)
    if (s.expert == expert) {
      ++hits_;
      if (s.prefetched_unused) ++prefetch_used_;
      s.prefetched_unused = false;
      s.last_use = clock_;
      return s.views;
    }
  ++misses_;
  Slot& slot = victim(layer, {});
  load(layer, slot, expert);
  slot.last_use = clock_;
  return slot.views;
}

void ExpertCache::prefetch(int64_t layer_index, std::span<const int32_t> experts) {
  Layer& layer = layers_.at(static_cast<size_t>(layer_index));
  wait(layer);
  std::vector<int64_t> wanted(experts.begin(), experts.end());
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  if (static_cast<int64_t>(wanted.size()) > static_cast<int64_t>(layer.slots.size()))
    wanted.resize(layer.slots.size());
  // Slots are chosen now, on this thread: the background task only fills them.
  std::vector<std::pair<Slot*, int64_t>> loads;
  for (const int64_t e : wanted) {
    const bool resident = std::any_of(layer.slots.begin(), layer.slots.end(),
                                      [&](const Slot& s) { return s.expert == e; });
    if (resident) continue;
    Slot& slot = victim(layer, wanted);
    slot.expert = -1;
    slot.reserved = true;
    slot.last_use = clock_;
    loads.emplace_back(&slot, e);
  }
  if (loads.empty()) return;
  layer.pending = std::async(std::launch::async, [this, &layer, loads] {
    for (const auto& [slot, e] : loads) {
      load(layer, *slot, e);
      slot->prefetched_unused = true;
      ++prefetched_;
    }
  });
}

}  // namespace moe
