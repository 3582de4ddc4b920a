#pragma once
// Whether OpenBLAS runs slower kernels than the CPU could: OPENBLAS_CORETYPE=Haswell on an
// AVX-512 machine halves sgemm's speed (measured: about 200 against 380 GFLOP/s).
#include <string>
#include <string_view>

namespace moe {

// The widest vector instructions a CPU (or an OpenBLAS kernel set) uses.
enum class VectorLevel { Sse, Avx, Avx2, Avx512 };

// The level of OpenBLAS's kernels for a core name ("Haswell" -> Avx2, "SkylakeX" -> Avx512).
VectorLevel blas_core_level(std::string_view core_name);
// The level of this CPU (Sse on other architectures than x86-64).
VectorLevel cpu_vector_level();

// One line saying that `coretype` (OPENBLAS_CORETYPE's value, empty when unset) makes OpenBLAS
// run `core_name`'s kernels below what the CPU has; empty when it does not.
std::string blas_kernel_warning(std::string_view core_name, std::string_view coretype,
                                VectorLevel cpu);
// The same for this process: OpenBLAS's core, OPENBLAS_CORETYPE and this CPU.
std::string blas_kernel_warning();
// Prints that warning to stderr, at most once per process.
void warn_about_blas_kernel();

}  // namespace moe
