#!/usr/bin/env bash
# llama.cpp's tools built from its source (scripts/llama_cpp_source.sh) in build-llama/cmake,
# CPU-only, tuned to this CPU (-march=native) as a local llama.cpp build is by default:
# llama-bench (bench/llama_cpp.sh), llama-debug (logits), llama-quantize and llama-perplexity
# (the GGUF tests: tests/reference/gguf_model_reference.py). Prints the folder of the binaries on
# stdout, and nothing else there. Idempotent: a tool already built is not built again.
set -euo pipefail
cd "$(dirname "$0")/.."

src=$(bash scripts/llama_cpp_source.sh)
out=build-llama/cmake
tools=(llama-bench llama-debug llama-quantize llama-perplexity)
if [ ! -f "$out/CMakeCache.txt" ]; then
  # LLAMA_OPENSSL=OFF: no HTTPS model downloads (this version's LLAMA_CURL).
  cmake -S "$src" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    > build-llama/cmake.log
fi
missing=()
for t in "${tools[@]}"; do [ -x "$out/bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  start=$SECONDS
  echo "llama_cpp_tools: building ${missing[*]} (several minutes on 2 cores)" >&2
  nice -n 10 cmake --build "$out" -j2 --target "${missing[@]}" > build-llama/build.log
  echo "llama_cpp_tools: built in $((SECONDS - start)) s" >&2
fi
echo "$PWD/$out/bin"
