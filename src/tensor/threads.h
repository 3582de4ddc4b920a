#pragma once
// One thread count for our OpenMP loops and OpenBLAS (its OpenMP build shares the pool).
namespace moe {

// Sets the thread count; n <= 0 means: MOE_THREADS if set, else the OpenMP default.
void set_threads(int n);
int thread_count();

// The OpenBLAS core whose kernels run, e.g. "Cooperlake". OpenBLAS picks it from the CPU, or
// from OPENBLAS_CORETYPE when that is set (some images set it to Haswell: AVX2 only).
const char* blas_core_name();
// The threads OpenBLAS runs with.
int blas_thread_count();

}  // namespace moe
