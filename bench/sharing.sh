#!/usr/bin/env bash
# How `moe` shares the cores: training tokens/s (`moe bench train --batch-size 32`) and decode
# tokens/s (`moe bench decode --random mixtral-d512 --n-gen 512`) for one process alone, two processes at
# once (each), and one process beside a busy loop, under each OpenMP waiting setting given.
#
#   bash bench/sharing.sh [SETTING...]     e.g. default OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=1000
#
# "default" runs with neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT set: moe's own choice
# (GOMP_SPINCOUNT=300, src/cli/main.cpp); GOMP_SPINCOUNT=300000 is libgomp's default (about 3 ms
# of spinning at a barrier before a thread sleeps); any SETTING is NAME=VALUE put in the
# environment.
set -euo pipefail
cd "$(dirname "$0")/.."
moe=./build/moe
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(GOMP_SPINCOUNT=300000 OMP_WAIT_POLICY=passive default)

train() { "$moe" bench train --batch-size 32 --steps 15 --json | sed -n 's/.*"tokens_per_s":\([0-9.]*\).*/\1/p'; }
decode() {
  "$moe" bench decode --random mixtral-d512 --n-prompt 16 --n-gen 512 --json |
    sed -n 's/.*"decode_tokens_per_s": *\([0-9.]*\).*/\1/p'
}

# Runs "$1" alone, two at once, and beside a busy loop; prints the four figures.
measure() {
  local what=$1 alone a b busy_rate busy
  alone=$($what)
  $what > /tmp/moe-sharing-a &
  a=$!
  $what > /tmp/moe-sharing-b &
  b=$!
  wait $a $b
  (while :; do :; done) &
  busy=$!
  busy_rate=$($what)
  kill $busy
  printf '%8.0f %8.0f %8.0f %8.0f' "$alone" "$(cat /tmp/moe-sharing-a)" "$(cat /tmp/moe-sharing-b)" "$busy_rate"
}

echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores; $("$moe" --version)"
printf '%-26s %-6s %8s %8s %8s %8s\n' setting job alone "pair: a" b "busy"
for setting in "${settings[@]}"; do
  for job in train decode; do
    if [ "$setting" = default ]; then
      line=$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT bash -c "$(declare -f train decode measure); moe=$moe; measure $job")
    else
      line=$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$setting" bash -c "$(declare -f train decode measure); moe=$moe; measure $job")
    fi
    printf '%-26s %-6s %s\n' "$setting" "$job" "$line"
  done
done
