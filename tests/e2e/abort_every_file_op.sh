#!/usr/bin/env bash
# Crash consistency of a run folder, through the CLI. MOE_ABORT_AFTER_FILE_OPS=N kills `moe`
# with SIGKILL right after its N-th file operation (tensor/atomic_file.h). For every N of
#  1. a fresh start           (moe train --out R ...),
#  2. a resume                (moe train --resume R, from the run's first checkpoint),
#  3. a replacing fresh start (moe train --out R --force ..., over another run),
# the process is killed there; then the folder must load (moe generate) or hold nothing, and
# finishing it (--resume when it holds a checkpoint, else the same command again) must end
# with model.safetensors, optimizer.safetensors and the loss lines of metrics.jsonl identical
# to a run never stopped. N counts up until the command finishes without being killed.
set -euo pipefail
moe=$1
src=$2
# On tmpfs where there is one: fsync costs nothing there, and the test makes a few thousand.
work=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")")
trap 'rm -rf "$work"' EXIT
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 24 | gzip > "$work/corpus.jsonl.gz"
common=(--config "$src/tests/cases/tiny_model.json" --corpus "$work/corpus.jsonl.gz"
        --steps 2 --save-every 1 --batch-size 2 --seq-len 16 --eval-every 2 --eval-batches 1
        --monitor-every 1 --warmup 1 --quiet --no-sample)
# One thread: the same bits whatever the machine (same seed + same threads = same run).
train() { "$moe" --threads 1 train "$@" > /dev/null 2>&1; }
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }
same_as() {  # run reference
  cmp -s "$2/model.safetensors" "$1/model.safetensors" &&
    cmp -s "$2/optimizer.safetensors" "$1/optimizer.safetensors" &&
    diff -q <(losses "$2") <(losses "$1") > /dev/null
}
step_of() { grep -o '"step": [0-9]*' "$1/trainer_state.json" | grep -o '[0-9]*$'; }
loads() { "$moe" --threads 1 generate --model "$1" --prompt a --max-tokens 2 > /dev/null 2>&1; }
fail() { echo "FAIL: $*"; exit 1; }

train --out "$work/reference" "${common[@]}"
train --out "$work/other" "${common[@]}" --seed 7  # the run that --force replaces

# killed RUN N COMMAND...: runs COMMAND killed after file operation N; returns 1 once it
# finishes instead.
killed() {
  local rc=0
  # (Braces: the shell's own "Killed" notice goes to /dev/null too.)
  { MOE_ABORT_AFTER_FILE_OPS=$2 "$moe" --threads 1 train "${@:3}"; } > /dev/null 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then return 1; fi
  [ "$rc" -eq 137 ] || fail "$1 with N=$2 exited $rc, expected 137 (killed)"
}

# 1. Fresh start.
n=1
first_checkpoint=""
while killed fresh "$n" --out "$work/run" "${common[@]}"; do
  if [ -f "$work/run/trainer_state.json" ]; then
    loads "$work/run" || fail "fresh N=$n: the folder does not load"
    if [ -z "$first_checkpoint" ] && [ "$(step_of "$work/run")" -eq 1 ]; then
      first_checkpoint=$n
      cp -r "$work/run" "$work/at_step_1"
    fi
    train --resume "$work/run" || fail "fresh N=$n: --resume failed"
  else
    train --out "$work/run" "${common[@]}" || fail "fresh N=$n: starting again failed"
  fi
  same_as "$work/run" "$work/reference" || fail "fresh N=$n: not the reference's bits"
  rm -rf "$work/run"
  n=$((n + 1))
done
same_as "$work/run" "$work/reference" || fail "fresh: the unkilled run differs"
echo "fresh start: killed after each of its $((n - 1)) file operations, always recovered"
[ -n "$first_checkpoint" ] || fail "no kill left a step-1 checkpoint"

# 2. Resume from step 1.
n=1
rm -rf "$work/run"
cp -r "$work/at_step_1" "$work/run"
while killed resume "$n" --resume "$work/run" --quiet --no-sample; do
  loads "$work/run" || fail "resume N=$n: the folder does not load"
  train --resume "$work/run" || fail "resume N=$n: resuming again failed"
  same_as "$work/run" "$work/reference" || fail "resume N=$n: not the reference's bits"
  rm -rf "$work/run"
  cp -r "$work/at_step_1" "$work/run"
  n=$((n + 1))
done
same_as "$work/run" "$work/reference" || fail "resume: the unkilled resume differs"
echo "resume: killed after each of its $((n - 1)) file operations, always recovered"

# 3. --force over another run: the folder always holds the old run or the new one.
n=1
rm -rf "$work/run"
cp -r "$work/other" "$work/run"
while killed force "$n" --out "$work/run" --force "${common[@]}"; do
  loads "$work/run" || fail "force N=$n: the folder does not load"
  if grep -q '"seed": 7' "$work/run/trainer_state.json"; then
    same_as "$work/run" "$work/other" || fail "force N=$n: the old run was damaged"
    train --out "$work/run" --force "${common[@]}" || fail "force N=$n: --force again failed"
  else
    train --resume "$work/run" || fail "force N=$n: --resume failed"
  fi
  same_as "$work/run" "$work/reference" || fail "force N=$n: not the reference's bits"
  [ ! -e "$work/run.replacing" ] || fail "force N=$n: run.replacing left behind"
  rm -rf "$work/run"
  cp -r "$work/other" "$work/run"
  n=$((n + 1))
done
same_as "$work/run" "$work/reference" || fail "force: the unkilled run differs"
echo "--force: killed after each of its $((n - 1)) file operations, always recovered"
