#pragma once
// How much more memory this process may use before something stops it: the machine's
// available memory, the cgroup's limit (a container, a systemd slice) and the process's own
// limits (ulimit -v, ulimit -d), whichever leaves the least. Commands compare an estimate of
// what they will need (model/memory_estimate.h) against it before they allocate, so that a
// run too large for the machine is refused in one line instead of killed by the kernel.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

// One limit and the headroom it leaves (what may still be allocated under it).
struct MemoryLimit {
  std::string name;  // "MemAvailable", "cgroup memory.max", "ulimit -v", ...
  uint64_t headroom = 0;
  // ulimit -v and -d count address space reserved and never touched (malloc's per-thread
  // arenas, thread stacks, library buffers) as much as memory used.
  bool address_space = false;
};

struct AvailableMemory {
  uint64_t bytes = UINT64_MAX;  // the least headroom; UINT64_MAX when nothing was readable
  std::string limited_by;       // the name of that limit ("" when none)
  std::vector<MemoryLimit> limits;
  // "7.6 GiB (MemAvailable)": for messages.
  std::string describe() const;
};

// Reads /proc/meminfo, /proc/self/cgroup with the cgroup's (and its ancestors') memory
// limits under /sys/fs/cgroup (v2 memory.max, v1 memory.limit_in_bytes), and getrlimit
// (RLIMIT_AS against VmSize, RLIMIT_DATA against VmData). A file that is missing or
// unreadable just contributes no limit.
AvailableMemory available_memory();

// The parsers behind it, pure for tests.
// MemAvailable of a /proc/meminfo text, in bytes.
std::optional<uint64_t> parse_meminfo_available(std::string_view meminfo);
// A "kB" field of /proc/self/status ("VmSize", "VmData"), in bytes.
std::optional<uint64_t> parse_status_field(std::string_view status, std::string_view field);
// A field of a cgroup memory.stat text ("inactive_file", "total_inactive_file").
std::optional<uint64_t> parse_stat_field(std::string_view stat, std::string_view field);
// The headroom a cgroup's limit leaves: limit - (usage - inactive file pages), the "working
// set" that the kernel cannot just drop; nullopt when `limit_text` is "max" or holds a value
// too large to be a real limit (cgroup v1 writes 2^63 rounded down to a page for none).
std::optional<uint64_t> cgroup_headroom(std::string_view limit_text, uint64_t usage,
                                        uint64_t inactive_file);
// The memory controller's cgroup paths of a /proc/self/cgroup text: the v2 path ("0::/x")
// and the v1 path of the line naming "memory".
struct CgroupPaths {
  std::optional<std::string> v2, v1_memory;
};
CgroupPaths parse_proc_cgroup(std::string_view text);

}  // namespace moe
