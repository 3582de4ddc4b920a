#!/usr/bin/env bash
# Installs every Debian 12 package moe needs to build, test and benchmark. Idempotent.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev          # OpenBLAS, OpenMP build: shares one thread pool with our loops
  nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev zlib1g-dev   # tokenizer; reading the gzip corpus
  libpcre2-dev libicu-dev          # tokenizer.json BPE: regexes with \p{L}/\p{N}; NFC normalizer
  libcpp-httplib-dev               # moe serve: the HTTP server
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin        # expert parallelism across processes (moe train under mpirun)
  clang-format
  clang libclang-rt-14-dev libomp-dev  # libFuzzer targets (scripts/fuzz.sh), OpenMP for clang
  python3 python3-torch python3-numpy   # PyTorch reference tests (run with /usr/bin/python3)
  chromium fonts-dejavu-core      # the `moe report` test opens the page in headless Chromium
  python3-regex                    # the BPE tokenizer's Python reference (\p{L} in regexes)
  python3-yaml                     # gguf-py (llama.cpp's GGUF writer) imports it
  qemu-user                        # the binary run as CPUs without AVX / AVX-512 (portability test)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
