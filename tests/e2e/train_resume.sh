#!/usr/bin/env bash
# End to end: a tiny MoE model (noisy top-k routing and jitter, so the routing-noise streams
# must be restored too) trained on a slice of the shipped corpus; then the same with sequence
# routing (its repeated noise draws) and with expert choice (its learned thresholds).
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
common=(--corpus "$work/corpus.jsonl.gz" --steps 600 --batch-size 4 --seq-len 32
        --eval-every 50 --monitor-every 20 --quiet --no-sample)
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }

# The variants: tiny_model.json as it is, routed by sequence, and by expert choice.
python3 - "$src/tests/cases/tiny_model.json" "$work" <<'PY'
import json, sys
base = json.load(open(sys.argv[1]))
variants = {"token": {}, "sequence": {"routing_level": "sequence", "route_prefix": 4},
            "expert_choice": {"router_type": "expert_choice", "aux_loss_type": "none",
                              "capacity_factor": 1.0}}
for name, change in variants.items():
    config = json.loads(json.dumps(base))
    config["moe"].update(change)
    json.dump(config, open(f"{sys.argv[2]}/{name}.json", "w"))
PY

stop_after_first_checkpoint() {  # variant run signal
  "$moe" train --out "$work/$1-$2" --config "$work/$1.json" "${common[@]}" --save-every 7 \
    > /dev/null 2>&1 &
  local pid=$!
  until [ -f "$work/$1-$2/trainer_state.json" ]; do sleep 0.01; done
  kill -"$3" "$pid"
  local rc=0
  wait "$pid" || rc=$?
  local step
  step=$(grep -o '"step": [0-9]*' "$work/$1-$2/trainer_state.json" | grep -o '[0-9]*$')
  echo "$1-$2: signal $3 at step $step, exit code $rc"
  if [ "$step" -ge 600 ]; then echo "FAIL: the $1-$2 run finished before the signal"; exit 1; fi
  if [ "$3" = INT ] && [ "$rc" -ne 130 ]; then echo "FAIL: SIGINT should exit 130, got $rc"; exit 1; fi
  "$moe" train --resume "$work/$1-$2" --quiet --no-sample > /dev/null 2>&1
}

for variant in token sequence expert_choice; do
  "$moe" train --out "$work/$variant-straight" --config "$work/$variant.json" "${common[@]}" \
    --save-every 7 2> /dev/null > /dev/null
  stop_after_first_checkpoint "$variant" killed KILL
  stop_after_first_checkpoint "$variant" interrupted INT
  for run in killed interrupted; do
    cmp "$work/$variant-straight/model.safetensors" "$work/$variant-$run/model.safetensors"
    cmp "$work/$variant-straight/optimizer.safetensors" "$work/$variant-$run/optimizer.safetensors"
    diff <(losses "$work/$variant-straight") <(losses "$work/$variant-$run")
    echo "$variant-$run: resumed run identical to the straight one"
  done
done
common=(--config "$work/token.json" "${common[@]}")

# Divergence: the error names the step; the last good checkpoint survives.
rc=0
"$moe" train --out "$work/diverge" "${common[@]}" --lr 1e6 --warmup 0 --grad-clip 0 \
  --save-every 1 > "$work/diverge.log" 2>&1 || rc=$?
cat "$work/diverge.log" | tail -1
if [ "$rc" -ne 2 ]; then echo "FAIL: divergence should exit 2, got $rc"; exit 1; fi
grep -q "at step" "$work/diverge.log"
"$moe" generate --model "$work/diverge" --prompt "a" --max-tokens 3 > /dev/null
echo "divergence: stopped with exit 2, the last checkpoint still loads"
