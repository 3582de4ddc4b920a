#!/usr/bin/env bash
# What quantization costs in perplexity, and what it saves in bytes, on trained models:
#
#   bash bench/quant_quality.sh [--ctx N] [--chars N]
#
# 1. The trained default run (runs/default, from scripts/main.sh). llama.cpp's architectures
#    cannot hold its dense blocks between MoE blocks, so it is measured by moe alone:
#    `moe eval --quantize TYPE` types each tensor as `moe quantize` would and rounds it as the
#    file would hold it.
# 2. A model every block of which is MoE (configs/d256-all-moe.json: width 256, 4 blocks of 8
#    experts top-2, trained here for 800 steps of 32 x 128 tokens into runs/d256-all-moe if
#    that run is missing, about 12 minutes on 2 cores), exported as a Hugging Face Mixtral
#    folder (`moe export`) and written by `moe quantize` as GGUF files. Each file is scored by
#    `moe eval` and by llama.cpp's llama-perplexity (scripts/llama_cpp_tools.sh builds it).
#
# The text is the shipped corpus's validation documents (data/corpus.jsonl.gz, split "valid":
# English, French, German, Spanish, C/C++ and Python), taken in turn per domain up to --chars
# characters; chunks of --ctx tokens (default 128), each scored on its second half as
# llama-perplexity does. Everything is written to build/quant-quality/.
set -euo pipefail
cd "$(dirname "$0")/.."

ctx=128 chars=120000
while [ $# -gt 0 ]; do
  case "$1" in
    --ctx) ctx=$2; shift 2 ;;
    --chars) chars=$2; shift 2 ;;
    *) echo "usage: bash bench/quant_quality.sh [--ctx N] [--chars N]" >&2; exit 2 ;;
  esac
done
out=build/quant-quality
py=/usr/bin/python3
mkdir -p "$out"
[ -x build/moe ] || bash scripts/build.sh
[ -d runs/default ] || { echo "runs/default is missing: bash scripts/main.sh trains it" >&2; exit 2; }
llama_bin=$(bash scripts/llama_cpp_tools.sh)
export LD_LIBRARY_PATH=$llama_bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

text=$out/validation.txt
"$py" - "$chars" > "$text" << 'EOF'
import collections, gzip, json, sys
limit = int(sys.argv[1])
by_domain = collections.defaultdict(list)
for line in gzip.open("data/corpus.jsonl.gz", "rt", encoding="utf-8"):
    d = json.loads(line)
    if d["split"] == "valid":
        by_domain[d["domain"]].append(d["text"].strip())
docs, i = [], 0
while sum(len(d) for d in docs) < limit and any(i < len(v) for v in by_domain.values()):
    docs += [v[i] for _, v in sorted(by_domain.items()) if i < len(v)]
    i += 1
print("\n\n".join(docs))
EOF

# llama.cpp's logger thread can lose the final estimate at exit unless the process waits a moment.
printf '#include <unistd.h>\n__attribute__((destructor)) static void w(void) { usleep(300000); }\n' \
  > "$out/exit_delay.c"
cc -shared -fPIC -o "$out/exit_delay.so" "$out/exit_delay.c"

moe_ppl() {  # MODEL [--quantize TYPE]: "perplexity weight_bytes"
  ./build/moe eval -m "$1" --text "$text" --ctx "$ctx" --json "${@:2}" |
    "$py" -c 'import json,sys; j=json.load(sys.stdin); print(j["perplexity"], j.get("weight_bytes", 0))'
}
llama_ppl() {  # FILE.gguf: llama-perplexity's final estimate
  LD_PRELOAD=$PWD/$out/exit_delay.so "$llama_bin/llama-perplexity" -m "$1" -f "$text" -c "$ctx" \
    -b "$ctx" -t 2 -fa off -ctk f32 -ctv f32 2>&1 | tee "$1.perplexity.log" |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
types=(f32 bf16 q8_0 q4_0 q4_k_m)

echo "## runs/default (moe alone: dense blocks between MoE blocks)"
echo
echo "| weights | MB | bits/weight | perplexity | vs f32 |"
echo "|---|---|---|---|---|"
params=$(./build/moe params --config runs/default/config.json --json |
  "$py" -c 'import json,sys; print(json.load(sys.stdin)["total_params"])')
base=""
for t in "${types[@]}"; do
  read -r ppl bytes < <(moe_ppl runs/default --quantize "$t")
  base=${base:-$ppl}
  "$py" -c "b=$bytes; p=$params; print(f'| $t | {b/1e6:.2f} | {8*b/p if p else 0:.2f} | {$ppl:.4f} | {100*($ppl/$base-1):+.2f}% |')"
done

run=runs/d256-all-moe
if [ ! -f "$run/model.safetensors" ]; then
  nice -n 5 ./build/moe train --config configs/d256-all-moe.json --out "$run" --force \
    --steps 800 --batch-size 32 --quiet --no-sample
fi
./build/moe export -m "$run" --out "$out/hf" --force > /dev/null
echo
echo "## $run as a Hugging Face folder, written as GGUF by moe quantize"
echo
echo "| file | MB | perplexity (moe eval) | perplexity (llama-perplexity) | moe / llama.cpp | vs f32 (moe) |"
echo "|---|---|---|---|---|---|"
base=""
for t in "${types[@]}"; do
  file=$out/d256-all-moe-$t.gguf
  ./build/moe quantize -m "$out/hf" -o "$file" -t "$t" > /dev/null
  read -r ppl _ < <(moe_ppl "$file")
  lppl=$(llama_ppl "$file")
  base=${base:-$ppl}
  "$py" -c "import os; print(f'| $t | {os.path.getsize(\"$file\")/1e6:.2f} | {$ppl:.4f} | {float(\"${lppl:-nan}\"):.4f} | {100*($ppl/float(\"${lppl:-nan}\")-1):+.3f}% | {100*($ppl/$base-1):+.2f}% |')"
done
