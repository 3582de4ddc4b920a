#!/usr/bin/env bash
# Configures and builds moe. Usage: scripts/build.sh [--sanitize]   (build dir: build/ or build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_BUILD_BENCH=OFF
  cmake --build build-asan -j2
else
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build build -j2
fi
