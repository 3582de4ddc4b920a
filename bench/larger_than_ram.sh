#!/usr/bin/env bash
# Decoding a model whose experts do not fit in the memory the process may use:
#
#   bash bench/larger_than_ram.sh [--model FILE.gguf] [--share F] [--n-gen T] [--slots "2 3"]
#
# The model (default: mixtral-d1024 at q4_0, which bench/llama_cpp.sh writes with llama.cpp's
# llama-quantize) is decoded once with no limit and every expert mapped, then, in a memory
# cgroup whose limit is F (default 0.5) of the experts' bytes, with `--expert-cache N`: N
# experts per layer in RAM, the rest read from the GGUF file with O_DIRECT when routed to (so
# the page cache holds none of them and the reads reach the disk), under LRU and LFU, with and
# without prefetch. moe reads the cgroup's limit and refuses an N whose cache would not fit.
# Each row gives tok/s, the share of the unlimited tok/s, the hit rate, prefetch recall, the
# bytes read from storage per token, and the cgroup's peak use against its limit. The disk's
# own O_DIRECT read speed (two dd readers, 2 MiB blocks) bounds tok/s at speed / bytes per
# token, before any compute.
# Needs root for the cgroup (cgroup v1's memory controller or cgroup v2's memory.max).
set -euo pipefail
cd "$(dirname "$0")/.."

model=build-llama/mixtral-d1024-q4_0.gguf share=0.5 tokens=64 slots="2 3"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --share) share=$2; shift 2 ;;
    --n-gen) tokens=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    *) echo "usage: bash bench/larger_than_ram.sh [--model FILE.gguf] [--share F] [--n-gen T] [--slots \"2 3\"]" >&2
       exit 2 ;;
  esac
done
[ -f "$model" ] || { echo "$model is missing: bash bench/llama_cpp.sh writes it" >&2; exit 2; }
py=/usr/bin/python3
gguf_py=build-llama/src/gguf-py
[ -d "$gguf_py" ] || bash scripts/llama_cpp_source.sh > /dev/null

expert_bytes=$(PYTHONPATH=$gguf_py "$py" -c '
import sys
from gguf import GGUFReader
print(sum(int(t.n_bytes) for t in GGUFReader(sys.argv[1]).tensors if "_exps." in t.name))' "$model")
limit=$("$py" -c "print(int($expert_bytes * $share))")

# A memory cgroup of our own, below the one this shell runs in.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  parent=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
  group=$parent/moe-larger-than-ram-$$
  mkdir "$group"
  echo "$limit" > "$group/memory.max"
  echo 0 > "$group/memory.swap.max" 2> /dev/null || true
  peak_file=memory.peak
else
  parent=/sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
  group=$parent/moe-larger-than-ram-$$
  mkdir "$group"
  echo "$limit" > "$group/memory.limit_in_bytes"
  echo "$limit" > "$group/memory.memsw.limit_in_bytes" 2> /dev/null || true
  peak_file=memory.max_usage_in_bytes
fi
errors=$(mktemp)
trap 'rmdir "$group" 2> /dev/null || true; rm -f "$errors"' EXIT

decode() {  # LIMITED(0|1) ARGS...: moe bench decode's JSON
  local limited=$1; shift
  if [ "$limited" = 1 ]; then
    [ "$peak_file" = memory.max_usage_in_bytes ] && echo 0 > "$group/$peak_file"
    sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$group" \
      ./build/moe bench decode --model "$model" --n-prompt 32 --n-gen "$tokens" --json "$@"
  else
    ./build/moe bench decode --model "$model" --n-prompt 32 --n-gen "$tokens" --json "$@"
  fi
}
field() { "$py" -c 'import json,sys; j=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# The disk read by two O_DIRECT readers at once, 2 MiB a read, as the decode step's two threads
# read the experts they miss (one reader alone gets about half as much from this VM's disk).
disk_bps=$("$py" - "$model" << 'EOF'
import os, subprocess, sys, time
path, block = sys.argv[1], 2 << 20
blocks = os.path.getsize(path) // block
start = time.time()
readers = [subprocess.Popen(["dd", f"if={path}", "of=/dev/null", f"bs={block}", "iflag=direct",
                             f"skip={i * blocks // 2}", f"count={blocks // 2}"],
                            stderr=subprocess.DEVNULL) for i in range(2)]
for r in readers:
    r.wait()
print(2 * (blocks // 2) * block / (time.time() - start))
EOF
)
disk="$("$py" -c "print(f'{$disk_bps / 1e9:.2f} GB/s')")"
unlimited=$(decode 0 | field 'j["decode_tokens_per_s"]')
echo "model $model: experts $("$py" -c "print(f'{$expert_bytes/1e6:.1f}')") MB, memory limit" \
  "$("$py" -c "print(f'{$limit/1e6:.1f}')") MB ($share of the experts); disk O_DIRECT read $disk (2 readers);" \
  "unlimited decode $("$py" -c "print(f'{$unlimited:.1f}')") tok/s"
echo
echo "| N per layer | policy | prefetch | tok/s | of unlimited | hit rate | prefetch recall | MB read per token | disk bound tok/s | peak MB / limit |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in $slots; do
  for policy in lru lfu; do
    for prefetch in "" --prefetch; do
      if ! json=$(decode 1 --expert-cache "$n" --cache-policy "$policy" $prefetch 2> "$errors"); then
        echo "| $n | $policy | ${prefetch:+on} | refused or killed: $(tail -1 "$errors") |"
        continue
      fi
      peak=$(cat "$group/$peak_file")
      echo "$json" | "$py" -c "
import json, sys
j = json.load(sys.stdin); c = j['expert_cache']; tps = j['decode_tokens_per_s']
mb = c['storage_bytes_per_token'] / 1e6
bound = $disk_bps / c['storage_bytes_per_token'] if c['storage_bytes_per_token'] else float('inf')
recall = f\"{c['prefetch_recall']:.3f}\" if c['prefetch'] else '-'
print(f\"| $n | $policy | {'on' if c['prefetch'] else 'off'} | {tps:.1f} | {tps / $unlimited:.2f} | {c['hit_rate']:.3f} | {recall} | {mb:.1f} | {bound:.1f} | {$peak / 1e6:.0f} / {$limit / 1e6:.0f} |\")"
    done
  done
done
