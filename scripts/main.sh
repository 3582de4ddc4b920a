#!/usr/bin/env bash
# The README's first command: install, build, train the default MoE model on the shipped
# corpus (into runs/default), then write the run's report (report.html in the run folder) and
# print its path. Extra arguments go to `moe train`.
# Run again, it trains runs/default anew: unless the arguments name --out, --resume or
# --force, it passes --force, which keeps the previous run until the new one's first
# checkpoint replaces it. A fresh run keeps each checkpoint (--keep-checkpoints) so that the
# report can show how routing settled during training.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
args=("$@")
case " $* " in
  *" --out"* | *" --resume"* | *" --force "*) ;;
  *) args+=(--force) ;;
esac
case " $* " in
  *" --resume"* | *" --keep-checkpoints "*) ;;
  *) args+=(--keep-checkpoints) ;;
esac
# The run folder: --out's or --resume's value, else runs/default.
run=runs/default
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --out | --resume) run="${args[i + 1]:-$run}" ;;
    --out=* | --resume=*) run="${args[i]#*=}" ;;
  esac
done
./build/moe train "${args[@]}"
# Beside the dense baseline when one was trained into runs/dense-baseline.
compare=()
if [[ -f runs/dense-baseline/trainer_state.json && "$run" != runs/dense-baseline ]]; then
  compare=(--compare runs/dense-baseline)
fi
./build/moe report --model "$run" "${compare[@]}" --out "$run/report.html"
