#!/usr/bin/env bash
# `moe train --keep-checkpoints` under kills: MOE_ABORT_AFTER_FILE_OPS=N kills a fresh start
# right after its N-th file operation (tensor/atomic_file.h), for every N; the run is then
# finished (--resume when it holds a checkpoint, else the same command again) and its kept
# checkpoints (checkpoints/step-NNNNNN/) must be those of a run never stopped, byte for byte,
# with no half-written folder left; `moe eval` reads them (routing saturation).
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")")
trap 'rm -rf "$work"' EXIT
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 24 | gzip > "$work/corpus.jsonl.gz"
common=(--config "$src/tests/cases/tiny_model.json" --corpus "$work/corpus.jsonl.gz"
        --steps 2 --save-every 1 --batch-size 2 --seq-len 16 --eval-every 2 --eval-batches 1
        --warmup 1 --quiet --no-sample --keep-checkpoints)
train() { "$moe" --threads 1 train "$@" > /dev/null 2>&1; }
fail() { echo "FAIL: $*"; exit 1; }
same_kept() {  # run reference
  [ "$(ls "$1/checkpoints")" = "$(ls "$2/checkpoints")" ] || return 1
  for step in "$2"/checkpoints/*; do
    for f in config.json model.safetensors; do
      cmp -s "$step/$f" "$1/checkpoints/$(basename "$step")/$f" || return 1
    done
  done
}

train --out "$work/reference" "${common[@]}"
[ "$(ls "$work/reference/checkpoints")" = "step-000001
step-000002" ] || fail "kept checkpoints: $(ls "$work/reference/checkpoints")"
cmp -s "$work/reference/model.safetensors" "$work/reference/checkpoints/step-000002/model.safetensors" \
  || fail "the last kept model is not the run's"

n=1
while true; do
  rc=0
  { MOE_ABORT_AFTER_FILE_OPS=$n "$moe" --threads 1 train --out "$work/run" "${common[@]}"; } \
    > /dev/null 2>&1 || rc=$?
  [ "$rc" -eq 0 ] && break
  [ "$rc" -eq 137 ] || fail "N=$n exited $rc, expected 137 (killed)"
  if [ -f "$work/run/trainer_state.json" ]; then
    train --resume "$work/run" || fail "N=$n: --resume failed"
  else
    train --out "$work/run" "${common[@]}" || fail "N=$n: starting again failed"
  fi
  same_kept "$work/run" "$work/reference" || fail "N=$n: kept checkpoints differ from the reference's"
  rm -rf "$work/run"
  n=$((n + 1))
done
same_kept "$work/run" "$work/reference" || fail "the unkilled run's kept checkpoints differ"
"$moe" --threads 1 eval --model "$work/run" --json | grep -q '"saturation":{' \
  || fail "moe eval reports no saturation"
echo "killed after each of $((n - 1)) file operations: kept checkpoints always whole and exact"
echo "PASS"
