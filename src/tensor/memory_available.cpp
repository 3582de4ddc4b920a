#include "tensor/memory_available.h"

#include <sys/resource.h>

#include <charconv>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tensor/error.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

// cgroup v1 reports "no limit" as 2^63 rounded down to a page; anything this large is none.
constexpr uint64_t kNoLimit = uint64_t{1} << 62;

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<uint64_t> parse_number(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  uint64_t value = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (err != std::errc() || end == text.data()) return std::nullopt;
  return value;
}

// The value after "<key>" at the start of a line ("MemAvailable:", "inactive_file ").
std::optional<uint64_t> line_value(std::string_view text, std::string_view key) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    const std::string_view line = text.substr(pos, end - pos);
    if (line.starts_with(key)) return parse_number(line.substr(key.size()));
    pos = end + 1;
  }
  return std::nullopt;
}

void add_limit(AvailableMemory& a, std::string name, uint64_t headroom,
               bool address_space = false) {
  a.limits.push_back({name, headroom, address_space});
  if (headroom < a.bytes) {
    a.bytes = headroom;
    a.limited_by = std::move(name);
  }
}

// The least headroom over a cgroup and its ancestors (a parent's limit binds its children).
// `dir`: the cgroup's folder; limit/usage/stat: the file names of this cgroup version.
void add_cgroup_limits(AvailableMemory& a, fs::path dir, const fs::path& root,
                       const char* limit_file, const char* usage_file, const char* inactive_key,
                       const char* name) {
  std::optional<uint64_t> least;
  for (;;) {
    const auto limit = read_text((dir / limit_file).string());
    const auto usage = read_text((dir / usage_file).string());
    const auto stat = read_text((dir / "memory.stat").string());
    if (limit && usage) {
      const auto used = parse_number(*usage);
      const uint64_t inactive = stat ? parse_stat_field(*stat, inactive_key).value_or(0) : 0;
      if (used)
        if (const auto headroom = cgroup_headroom(*limit, *used, inactive))
          least = std::min(least.value_or(UINT64_MAX), *headroom);
    }
    if (dir == root || !dir.has_parent_path() || dir.parent_path() == dir) break;
    dir = dir.parent_path();
  }
  if (least) add_limit(a, name, *least);
}

}  // namespace

std::string AvailableMemory::describe() const {
  if (limited_by.empty()) return "unknown";
  return format_bytes(bytes) + " (" + limited_by + ")";
}

std::optional<uint64_t> parse_meminfo_available(std::string_view meminfo) {
  const auto kb = line_value(meminfo, "MemAvailable:");
  if (!kb) return std::nullopt;
  return *kb * 1024;
}

std::optional<uint64_t> parse_status_field(std::string_view status, std::string_view field) {
  const auto kb = line_value(status, std::string(field) + ":");
  if (!kb) return std::nullopt;
  return *kb * 1024;
}

std::optional<uint64_t> parse_stat_field(std::string_view stat, std::string_view field) {
  return line_value(stat, std::string(field) + " ");
}

std::optional<uint64_t> cgroup_headroom(std::string_view limit_text, uint64_t usage,
                                        uint64_t inactive_file) {
  const auto limit = parse_number(limit_text);
  if (!limit || *limit >= kNoLimit) return std::nullopt;  // "max", or v1's "no limit"
  const uint64_t working_set = usage > inactive_file ? usage - inactive_file : 0;
  return *limit > working_set ? *limit - working_set : 0;
}

CgroupPaths parse_proc_cgroup(std::string_view text) {
  CgroupPaths paths;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    // "hierarchy-id:controller-list:path"
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string_view::npos || second == std::string_view::npos) continue;
    const std::string_view controllers = line.substr(first + 1, second - first - 1);
    const std::string path(line.substr(second + 1));
    if (line.substr(0, first) == "0" && controllers.empty()) {
      paths.v2 = path;
      continue;
    }
    for (size_t c = 0; c <= controllers.size();) {
      const size_t comma = std::min(controllers.find(',', c), controllers.size());
      if (controllers.substr(c, comma - c) == "memory") paths.v1_memory = path;
      c = comma + 1;
    }
  }
  return paths;
}

AvailableMemory available_memory() {
  AvailableMemory a;
  if (const auto meminfo = read_text("/proc/meminfo"))
    if (const auto bytes = parse_meminfo_available(*meminfo)) add_limit(a, "MemAvailable", *bytes);
  if (const auto cgroup = read_text("/proc/self/cgroup")) {
    const CgroupPaths paths = parse_proc_cgroup(*cgroup);
    const fs::path v2_root = "/sys/fs/cgroup", v1_root = "/sys/fs/cgroup/memory";
    if (paths.v2 && fs::exists(v2_root / "cgroup.controllers"))
      add_cgroup_limits(a, v2_root / fs::path(*paths.v2).relative_path(), v2_root, "memory.max",
                        "memory.current", "inactive_file", "cgroup memory.max");
    if (paths.v1_memory)
      add_cgroup_limits(a, v1_root / fs::path(*paths.v1_memory).relative_path(), v1_root,
                        "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file",
                        "cgroup memory.limit_in_bytes");
  }
  // The process's own limits count what it has mapped already, not what it touched.
  const auto status = read_text("/proc/self/status");
  const std::pair<int, const char*> rlimits[] = {{RLIMIT_AS, "VmSize"}, {RLIMIT_DATA, "VmData"}};
  for (const auto& [resource, field] : rlimits) {
    rlimit limit{};
    if (::getrlimit(resource, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) continue;
    const uint64_t used = status ? parse_status_field(*status, field).value_or(0) : 0;
    const uint64_t cap = static_cast<uint64_t>(limit.rlim_cur);
    add_limit(a, resource == RLIMIT_AS ? "ulimit -v" : "ulimit -d", cap > used ? cap - used : 0,
              /*address_space=*/true);
  }
  return a;
}

}  // namespace moe
