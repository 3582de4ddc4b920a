#!/usr/bin/env bash
# The README's first command: install, build, train the default MoE model on the shipped
# corpus (into runs/default), then write its report (runs/default/report.html). Extra arguments go to `moe train`.
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
./build/moe train "${args[@]}"
# The run's report: one self-contained HTML page in the run folder (moe report prints its path),
# beside the dense baseline when one was trained into runs/dense-baseline.
compare=()
[[ -f runs/dense-baseline/trainer_state.json ]] && compare=(--compare runs/dense-baseline)
./build/moe report --model runs/default "${compare[@]}" --out runs/default/report.html
