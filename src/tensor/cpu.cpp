#include "tensor/cpu.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <utility>

#include "tensor/error.h"

namespace moe {
namespace {

constexpr std::array<std::string_view, 3> kSetNames = {"generic", "avx2", "avx512"};

// __builtin_cpu_supports asks CPUID and, for AVX and AVX-512, whether the OS saves the wide
// registers (XGETBV), so a set it grants is safe to run. Its argument must be a literal.
#if defined(__x86_64__)
#define MOE_CPU_HAS(feature) (__builtin_cpu_init(), __builtin_cpu_supports(feature))
#else
#define MOE_CPU_HAS(feature) false
#endif

KernelSet set_from_environment() {
  const char* env = std::getenv("MOE_KERNELS");
  if (!env || !*env) return best_kernel_set();
  const KernelSet wanted = parse_kernel_set(env);
  if (!cpu_supports(wanted))
    throw Error("MOE_KERNELS=" + std::string(env) + ": this CPU lacks the instructions (best: " +
                std::string(kernel_set_name(best_kernel_set())) + ")");
  return wanted;
}

std::atomic<KernelSet>& current_set() {
  static std::atomic<KernelSet> set{set_from_environment()};
  return set;
}

}  // namespace

std::string_view kernel_set_name(KernelSet set) {
  return kSetNames[static_cast<size_t>(set)];
}

KernelSet parse_kernel_set(std::string_view name) {
  for (size_t i = 0; i < kSetNames.size(); ++i)
    if (name == kSetNames[i]) return static_cast<KernelSet>(i);
  throw Error("MOE_KERNELS must be one of generic, avx2, avx512; got '" + std::string(name) + "'");
}

bool cpu_supports(KernelSet set) {
  switch (set) {
    case KernelSet::Avx512:
      return MOE_CPU_HAS("avx512f") && MOE_CPU_HAS("avx512bw") && MOE_CPU_HAS("avx512vl") &&
             MOE_CPU_HAS("avx512dq") && cpu_supports(KernelSet::Avx2);
    case KernelSet::Avx2:
      return MOE_CPU_HAS("avx2") && MOE_CPU_HAS("fma");
    case KernelSet::Generic:
      break;
  }
  return true;
}

KernelSet best_kernel_set() {
  if (cpu_supports(KernelSet::Avx512)) return KernelSet::Avx512;
  if (cpu_supports(KernelSet::Avx2)) return KernelSet::Avx2;
  return KernelSet::Generic;
}

bool cpu_has_avx512_bf16() {
  return MOE_CPU_HAS("avx512bf16");
}

KernelSet kernel_set() {
  return current_set().load(std::memory_order_relaxed);
}

void set_kernel_set(KernelSet set) {
  require(cpu_supports(set),
          "kernel set " + std::string(kernel_set_name(set)) + ": this CPU lacks the instructions");
  current_set().store(set, std::memory_order_relaxed);
}

bool use_avx512_bf16() {
  static const bool cpu = cpu_has_avx512_bf16();
  return cpu && kernel_set() == KernelSet::Avx512;
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

std::string cpu_vector_features() {
  const std::array<std::pair<const char*, bool>, 10> features = {{
      {"sse4.2", MOE_CPU_HAS("sse4.2")},
      {"avx", MOE_CPU_HAS("avx")},
      {"avx2", MOE_CPU_HAS("avx2")},
      {"fma", MOE_CPU_HAS("fma")},
      {"avx512f", MOE_CPU_HAS("avx512f")},
      {"avx512bw", MOE_CPU_HAS("avx512bw")},
      {"avx512vl", MOE_CPU_HAS("avx512vl")},
      {"avx512dq", MOE_CPU_HAS("avx512dq")},
      {"avx512vnni", MOE_CPU_HAS("avx512vnni")},
      {"avx512bf16", MOE_CPU_HAS("avx512bf16")},
  }};
  std::string out;
  for (const auto& [name, present] : features)
    if (present) {
      if (!out.empty()) out += ' ';
      out += name;
    }
  return out.empty() ? "sse2" : out;
}

}  // namespace moe
