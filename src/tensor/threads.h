#pragma once
// One thread count for our OpenMP loops and OpenBLAS (its OpenMP build shares the pool).
namespace moe {

// Sets the thread count; n <= 0 means: MOE_THREADS if set, else the OpenMP default.
void set_threads(int n);
int thread_count();

}  // namespace moe
