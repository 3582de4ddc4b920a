#pragma once
// What runs: the build (version, compiler, target), the CPU, the kernel set chosen, OpenBLAS's
// kernels and the thread counts, as llama.cpp's system-info line says it. `moe info` prints
// it; every `moe bench ... --json` records it under "system", so each figure carries the CPU and
// kernels that gave it.
#include <nlohmann/json.hpp>
#include <string>

namespace moe {

// "moe 0.6.0 (GCC 12.2.0, Release, portable x86-64)"
std::string version_line();
nlohmann::json system_info();
// One "name: value" line per field of system_info().
std::string system_info_text();

}  // namespace moe
