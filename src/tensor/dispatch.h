#pragma once
// Kernels compiled once per kernel set (tensor/cpu.h) from one portable body. The body is
// plain C++ (loops the compiler vectorises, "omp simd" where it helps); MOE_KERNEL makes three
// copies of a call to it, each compiled for one set with every callee inlined into it
// (flatten), and a function of the given name that runs the copy of the set in use.
//
// The rules that keep this safe and the sets' results equal:
//  - the body holds no "omp parallel" (a parallel region is outlined before inlining, so its
//    loop would keep the baseline target): callers split work among threads and call the
//    kernel per share;
//  - the body names no intrinsics: a set differs from another only in vector width;
//  - the build keeps a * b + c as two roundings everywhere (-ffp-contract=off), so a body whose
//    sums run in a fixed order (fixed lane counts, not "reduction" clauses) gives the same bits
//    in every set.
#include "tensor/cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define MOE_TARGET_GENERIC __attribute__((flatten))
#define MOE_TARGET_AVX2 __attribute__((target("avx2,fma"), flatten))
#define MOE_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"), flatten))
#else
#define MOE_TARGET_GENERIC
#define MOE_TARGET_AVX2
#define MOE_TARGET_AVX512
#endif

// MOE_KERNEL(name, (params...), (args...), body): defines `static auto name(params...)` that
// returns body(args...) compiled for kernel_set().
#define MOE_KERNEL(name, params, args, body)             \
  MOE_TARGET_GENERIC static auto name##_generic params { \
    return body args;                                    \
  }                                                      \
  MOE_TARGET_AVX2 static auto name##_avx2 params {       \
    return body args;                                    \
  }                                                      \
  MOE_TARGET_AVX512 static auto name##_avx512 params {   \
    return body args;                                    \
  }                                                      \
  [[maybe_unused]] static auto name params {             \
    switch (::moe::kernel_set()) {                       \
      case ::moe::KernelSet::Avx512:                     \
        return name##_avx512 args;                       \
      case ::moe::KernelSet::Avx2:                       \
        return name##_avx2 args;                         \
      case ::moe::KernelSet::Generic:                    \
        break;                                           \
    }                                                    \
    return name##_generic args;                          \
  }
