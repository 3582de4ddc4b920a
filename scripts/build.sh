#!/usr/bin/env bash
# Configures and builds moe. Usage: scripts/build.sh [--sanitize]   (build dir: build/ or build-asan/)
# MOE_WERROR=ON makes warnings errors (CI sets it); MOE_NATIVE=ON compiles for this CPU only.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(-DMOE_WERROR="${MOE_WERROR:-OFF}" -DMOE_NATIVE="${MOE_NATIVE:-OFF}")
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_BUILD_BENCH=OFF \
    "${flags[@]}"
  cmake --build build-asan -j2
else
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${flags[@]}"
  cmake --build build -j2
fi
