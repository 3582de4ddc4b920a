#!/usr/bin/env bash
# End to end: a tiny MoE model (noisy top-k routing and jitter, so the routing-noise streams
# must be restored too) trained on a slice of the shipped corpus.
#  1. straight:   N steps, never stopped
#  2. killed:     the same run SIGKILLed after its first checkpoint, then `moe train --resume`
#  3. interrupted: the same run sent SIGINT (saves and exits 130), then resumed
# Passes when runs 2 and 3 end with model.safetensors, optimizer.safetensors and the
# loss lines of metrics.jsonl identical to run 1's. Also: a diverging run (huge learning
# rate) stops with an error naming the step and keeps its last checkpoint.
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 60 | gzip > "$work/corpus.jsonl.gz"
common=(--config "$src/tests/cases/tiny_model.json" --corpus "$work/corpus.jsonl.gz"
        --steps 600 --batch-size 4 --seq-len 32 --eval-every 50
        --monitor-every 20 --quiet --no-sample)
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }

"$moe" train --out "$work/straight" "${common[@]}" --save-every 7 2> /dev/null

stop_after_first_checkpoint() {  # run signal
  "$moe" train --out "$work/$1" "${common[@]}" --save-every 7 > /dev/null 2>&1 &
  local pid=$!
  until [ -f "$work/$1/trainer_state.json" ]; do sleep 0.01; done
  kill -"$2" "$pid"
  local rc=0
  wait "$pid" || rc=$?
  local step
  step=$(grep -o '"step": [0-9]*' "$work/$1/trainer_state.json" | grep -o '[0-9]*$')
  echo "$1: signal $2 at step $step, exit code $rc"
  if [ "$step" -ge 600 ]; then echo "FAIL: the $1 run finished before the signal"; exit 1; fi
  if [ "$2" = INT ] && [ "$rc" -ne 130 ]; then echo "FAIL: SIGINT should exit 130, got $rc"; exit 1; fi
  "$moe" train --resume "$work/$1" --quiet --no-sample > /dev/null 2>&1
}
stop_after_first_checkpoint killed KILL
stop_after_first_checkpoint interrupted INT

for run in killed interrupted; do
  cmp "$work/straight/model.safetensors" "$work/$run/model.safetensors"
  cmp "$work/straight/optimizer.safetensors" "$work/$run/optimizer.safetensors"
  diff <(losses "$work/straight") <(losses "$work/$run")
  echo "$run: resumed run identical to the straight one"
done

# Divergence: the error names the step; the last good checkpoint survives.
rc=0
"$moe" train --out "$work/diverge" "${common[@]}" --lr 1e6 --warmup 0 --grad-clip 0 \
  --save-every 1 > "$work/diverge.log" 2>&1 || rc=$?
cat "$work/diverge.log" | tail -1
if [ "$rc" -ne 2 ]; then echo "FAIL: divergence should exit 2, got $rc"; exit 1; fi
grep -q "at step" "$work/diverge.log"
"$moe" generate --model "$work/diverge" --prompt "a" --max-tokens 3 > /dev/null
echo "divergence: stopped with exit 2, the last checkpoint still loads"
