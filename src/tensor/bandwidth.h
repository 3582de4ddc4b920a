#pragma once
// The machine's streaming read bandwidth: what a decode step, which reads every weight it
// uses once, can at best reach. Decode benchmarks report their share of it.
#include <cstdint>

namespace moe {

// Bytes per second of a read over a buffer far larger than the caches, all threads, best of
// `repeats` passes (the first touches the pages and does not count). The buffer lives only
// for the call.
double measure_read_bandwidth(int64_t bytes = int64_t{1} << 30, int repeats = 3);

}  // namespace moe
