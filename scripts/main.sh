#!/usr/bin/env bash
# The README's first command: install, build, train the default MoE model on the shipped
# corpus (into runs/default), then report and generate. Extra arguments go to `moe train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
if [ -d runs/default ] && [ $# -eq 0 ]; then
  echo "main: runs/default exists; moving it to runs/default.previous"
  rm -rf runs/default.previous
  mv runs/default runs/default.previous
fi
./build/moe train "$@"
