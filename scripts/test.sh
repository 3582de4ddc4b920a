#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with ctest (the PyTorch reference
# generator runs first as a ctest fixture). Usage: scripts/test.sh [--sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/llama_cpp_source.sh > /dev/null  # gguf-py, for the GGUF reader's reference files
bash scripts/llama_cpp_tools.sh > /dev/null   # llama-quantize and llama-debug: the GGUF models' reference
bash scripts/build.sh "$@"
dir=build
[ "${1:-}" = "--sanitize" ] && dir=build-asan
cd "$dir"
# OpenMP's thread pool is reported by LeakSanitizer at exit; it is not ours to free.
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j2
