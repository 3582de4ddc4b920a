#include "tensor/blas_info.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "tensor/cpu.h"
#include "tensor/threads.h"

namespace moe {
namespace {

const char* level_name(VectorLevel level) {
  switch (level) {
    case VectorLevel::Avx512:
      return "AVX-512";
    case VectorLevel::Avx2:
      return "AVX2";
    case VectorLevel::Avx:
      return "AVX";
    case VectorLevel::Sse:
      break;
  }
  return "SSE";
}

}  // namespace

VectorLevel blas_core_level(std::string_view core_name) {
  // OpenBLAS's x86-64 DYNAMIC_ARCH core names (openblas_get_corename) with AVX kernels; every
  // other core is SSE at best.
  static constexpr std::array<std::pair<std::string_view, VectorLevel>, 7> kCores = {{
      {"skylakex", VectorLevel::Avx512},
      {"cooperlake", VectorLevel::Avx512},
      {"sapphirerapids", VectorLevel::Avx512},
      {"haswell", VectorLevel::Avx2},
      {"zen", VectorLevel::Avx2},
      {"sandybridge", VectorLevel::Avx},
      {"bulldozer", VectorLevel::Avx},
  }};
  std::string lower(core_name);
  for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  for (const auto& [name, level] : kCores)
    if (lower == name) return level;
  return VectorLevel::Sse;
}

VectorLevel cpu_vector_level() {
  if (cpu_supports(KernelSet::Avx512)) return VectorLevel::Avx512;
  if (cpu_supports(KernelSet::Avx2)) return VectorLevel::Avx2;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx")) return VectorLevel::Avx;
#endif
  return VectorLevel::Sse;
}

std::string blas_kernel_warning(std::string_view core_name, std::string_view coretype,
                                VectorLevel cpu) {
  const VectorLevel kernels = blas_core_level(core_name);
  if (coretype.empty() || kernels >= cpu) return {};
  return "warning: OPENBLAS_CORETYPE=" + std::string(coretype) + " makes OpenBLAS run its " +
         std::string(core_name) + " (" + level_name(kernels) + ") kernels on a CPU with " +
         level_name(cpu) + ": matrix products run slower than this CPU allows; unset it to let " +
         "OpenBLAS choose";
}

std::string blas_kernel_warning() {
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  return blas_kernel_warning(blas_core_name(), coretype ? coretype : "", cpu_vector_level());
}

void warn_about_blas_kernel() {
  static const bool warned = [] {
    if (const std::string warning = blas_kernel_warning(); !warning.empty())
      std::fprintf(stderr, "moe: %s\n", warning.c_str());
    return true;
  }();
  (void)warned;
}

}  // namespace moe
