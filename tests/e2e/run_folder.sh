#!/usr/bin/env bash
# The run folder through the CLI:
#  - training into a folder that holds a run is refused in one line naming --resume and
#    --force, and the run is left as it was; --force replaces it;
#  - a second writer is locked out (exit 2, naming the holder's process id), SIGINT saves and
#    exits 130;
#  - a start that fails (a bad option, a config, a corpus too small for the vocabulary) leaves
#    no folder behind;
#  - --resume applies --steps and --lr with a line saying so and refuses the other options;
#    a finished run says so; the progress lines carry no control codes off a terminal and fit
#    80 columns.
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 24 | gzip > "$work/corpus.jsonl.gz"
base=(--config "$src/tests/cases/tiny_model.json" --corpus "$work/corpus.jsonl.gz"
      --batch-size 2 --eval-every 2 --eval-batches 1 --no-sample)
common=("${base[@]}" --warmup 1 --seq-len 16)
fail() { echo "FAIL: $*"; exit 1; }
# expect_error CODE TEXT COMMAND...: COMMAND exits CODE, its error one line holding TEXT.
expect_error() {
  local code=$1 text=$2 rc=0
  shift 2
  "$@" > "$work/out" 2> "$work/err" || rc=$?
  [ "$rc" -eq "$code" ] || fail "'$*' exited $rc, expected $code: $(cat "$work/err")"
  tail -n 1 "$work/err" | grep -qF -- "$text" ||
    fail "'$*' said '$(cat "$work/err")', expected '$text'"
  [ "$(grep -c -v -e '^reading corpus' -e '^training a' "$work/err")" -eq 1 ] ||
    fail "'$*' printed more than its error line: $(cat "$work/err")"
}

run=$work/run
"$moe" train --out "$run" "${common[@]}" --steps 2 --quiet > /dev/null 2>&1
cp "$run/metrics.jsonl" "$work/metrics.before"
expect_error 2 "already holds a run (step 2): continue it with --resume $run, or pass --force" \
  "$moe" train --out "$run" "${common[@]}" --steps 2
cmp "$run/metrics.jsonl" "$work/metrics.before" || fail "the refused run touched metrics.jsonl"
echo "refused: training into an existing run"

# A second writer, while one trains (it runs until interrupted).
"$moe" train --resume "$run" --steps 1000000 --quiet --no-sample > /dev/null 2> "$work/long.err" &
pid=$!
until [ "$(cat "$run/run.lock" 2> /dev/null)" = "$pid" ]; do sleep 0.05; done
expect_error 2 "is in use by process $pid" "$moe" train --resume "$run" --quiet
expect_error 2 "is in use by process $pid" "$moe" train --out "$run" --force "${common[@]}"
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 130 ] || fail "SIGINT: exit $rc, expected 130"
grep -q "interrupted: saved step" "$work/long.err" || fail "SIGINT did not save"
echo "locked out: a second writer names process $pid; SIGINT saved and exited 130"

# --resume: --steps and --lr applied with a line each, the rest refused.
step=$(grep -o '"step": [0-9]*' "$run/trainer_state.json" | grep -o '[0-9]*$')
expect_error 2 "--batch-size cannot change on --resume" "$moe" train --resume "$run" --batch-size 4
expect_error 2 "--config cannot change on --resume" \
  "$moe" train --resume "$run" --config "$src/tests/cases/tiny_model.json"
expect_error 2 "--out does not go with --resume" "$moe" train --resume "$run" --out "$run"
expect_error 2 "is below the step of the run" "$moe" train --resume "$run" --steps 1
"$moe" train --resume "$run" --steps $((step + 2)) --lr 0.001 --quiet --no-sample \
  > "$work/out" 2> "$work/err"
grep -q "resume: --steps $((step + 2)) applied: the run now ends at step $((step + 2)) (was 1000000)" \
  "$work/err" || fail "no line for --steps: $(cat "$work/err")"
grep -q "resume: --lr 0.001 applied: peak learning rate 0.001 (was 0.006)" "$work/err" ||
  fail "no line for --lr"
grep -q "resume: learning-rate schedule:" "$work/err" || fail "no line for the schedule"
"$moe" train --resume "$run" > "$work/out" 2> "$work/err"
grep -q "^run '$run' already finished at step $((step + 2)) (validation loss [0-9.]*)" \
  "$work/out" || fail "finished run: $(cat "$work/out")"
echo "resume: --steps and --lr applied with a line each, other options refused"

"$moe" train --out "$run" --force "${common[@]}" --steps 2 --seed 5 --quiet > /dev/null 2>&1
grep -q '"seed": 5' "$run/trainer_state.json" || fail "--force did not replace the run"
[ ! -e "$run.replacing" ] || fail "--force left $run.replacing behind"
echo "--force: replaced the run"

# Failed starts leave nothing behind.
expect_error 2 "--seq-len 64 exceeds" "$moe" train --out "$work/new/a" "${base[@]}" --warmup 1 --seq-len 64 --quiet
expect_error 2 "pass --vocab-size" \
  "$moe" train --out "$work/new/b" "${common[@]}" --vocab-size 60000 --quiet
expect_error 2 "--min-lr must lie in" "$moe" train --out "$work/new/c" "${common[@]}" --min-lr 1
expect_error 2 "--warmup must not be negative" \
  "$moe" train --out "$work/new/d" "${base[@]}" --seq-len 16 --warmup -1
[ ! -e "$work/new" ] || fail "a failed start left $(ls -R "$work/new")"
echo "failed starts: no folder left behind"

# Progress lines off a terminal: no carriage returns or escape codes, at most 79 columns.
"$moe" train --out "$work/plain" "${common[@]}" --steps 3 --log-every 1 > /dev/null 2> "$work/err"
if grep -q $'[\r\033]' "$work/err"; then fail "control codes in the progress lines"; fi
grep -q "^\[#*\.*\] step 1/3  train loss" "$work/err" || fail "no progress line: $(cat "$work/err")"
[ "$(grep '^\[' "$work/err" | awk '{ if (length($0) > m) m = length($0) } END { print m }')" -le 79 ] ||
  fail "a progress line is wider than 79 columns"
"$moe" train --help > "$work/help"
if grep -qF -e '{false}' -e '(default: default)' "$work/help"; then fail "help: $(cat "$work/help")"; fi
echo "progress lines: plain and within 80 columns off a terminal; help text clean"
