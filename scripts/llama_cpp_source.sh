#!/usr/bin/env bash
# llama.cpp's source as node-llama-cpp 3.22.1 ships it on npm (a git bundle: the only route to
# that source from here), cloned into build-llama/src; prints that folder's absolute path on
# stdout, and nothing else there. Idempotent: a step whose output is present is skipped.
# Installs nodejs and npm with apt when either is missing. Used by bench/llama_cpp.sh (to build
# llama-bench) and by the tests (gguf-py, llama.cpp's own GGUF writer: reference.generate_gguf).
set -euo pipefail
cd "$(dirname "$0")/.."

out=build-llama
bundle=$out/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle
mkdir -p "$out"

if [ ! -f "$bundle" ]; then
  if ! { command -v node && command -v npm; } > /dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "llama_cpp_source: installing nodejs and npm" >&2
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
      nodejs npm >&2
  fi
  # --ignore-scripts: the package's install step would fetch prebuilt binaries from GitHub;
  # --omit=optional: those binaries' own npm packages.
  npm install --prefix "$out/npm" node-llama-cpp@3.22.1 --ignore-scripts --omit=optional \
    --no-audit --no-fund >&2
fi
if [ ! -d "$out/src/.git" ]; then
  # Cloned beside and renamed, so an interrupted clone never passes for a finished one.
  rm -rf "$out/src.part"
  git -c advice.detachedHead=false clone -q "$bundle" "$out/src.part" >&2
  rm -rf "$out/src"
  mv "$out/src.part" "$out/src"
fi
echo "$PWD/$out/src"
