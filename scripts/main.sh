#!/usr/bin/env bash
# The README's first command: install, build, train the default MoE model on the shipped
# corpus (into runs/default), then report and generate. Extra arguments go to `moe train`.
# Run again, it trains runs/default anew: unless the arguments name --out, --resume or
# --force, it passes --force, which keeps the previous run until the new one's first
# checkpoint replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
args=("$@")
case " $* " in
  *" --out"* | *" --resume"* | *" --force "*) ;;
  *) args+=(--force) ;;
esac
exec ./build/moe train "${args[@]}"
