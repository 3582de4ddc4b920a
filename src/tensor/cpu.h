#pragma once
// What this CPU can run, and which of our kernel sets runs. One binary runs on any x86-64 CPU:
// every hand-vectorised or hot loop is compiled once per kernel set (tensor/dispatch.h) and the
// best set the CPU supports is picked at start-up. MOE_KERNELS=generic|avx2|avx512 forces a
// lower one (tests run each); a set this CPU lacks is refused.
#include <string>
#include <string_view>

namespace moe {

// Generic: baseline x86-64 (SSE2), any CPU. Avx2: AVX2 + FMA (Haswell, Zen and later).
// Avx512: AVX-512 F/BW/VL/DQ (Skylake-X, Zen 4 and later); AVX512-BF16, where the CPU has it,
// adds the bf16 prefill tiles on top.
enum class KernelSet { Generic, Avx2, Avx512 };

std::string_view kernel_set_name(KernelSet set);
// "avx2" -> Avx2; anything else throws an Error listing the names.
KernelSet parse_kernel_set(std::string_view name);
// The widest set this CPU (and its OS, which must save the wide registers) supports.
KernelSet best_kernel_set();
bool cpu_supports(KernelSet set);
bool cpu_has_avx512_bf16();

// The set in use: MOE_KERNELS's on the first call when set (an Error if unknown or beyond this
// CPU), else best_kernel_set(). The CLI calls it before any work, so a bad MOE_KERNELS is one
// line and exit 2; later calls are one load.
KernelSet kernel_set();
// Switches the set in use (tests compare sets in one process); throws where the CPU lacks it.
void set_kernel_set(KernelSet set);
// Whether the AVX512-BF16 tiles run: the Avx512 set on a CPU with AVX512-BF16.
bool use_avx512_bf16();

// The CPU's model name ("AMD EPYC 7B13") and the vector features that matter here, as
// "sse4.2 avx avx2 fma avx512f ..." (those present only).
std::string cpu_model_name();
std::string cpu_vector_features();

}  // namespace moe
