#!/usr/bin/env bash
# Prefill and decode tokens/s of `moe` against llama.cpp on the same weights, in one run.
#
#   bash bench/llama_cpp.sh [--repeat N] [--n-prompt P] [--n-gen T] [--threads N]
#
# llama.cpp is the copy node-llama-cpp 3.22.1 ships on npm as a git bundle (the only route to
# its source from here), built CPU-only with -march=native, as a local llama.cpp build is by
# default. The model is `moe bench decode`'s random Mixtral (mixtral-d1024: 8 layers, width
# 1024, 8 experts top-2), kept once as a Hugging Face folder that moe maps and once as a GGUF
# llama.cpp loads, in f32 and in bf16; the two programs' logits for one prompt are compared once.
# The f32 GGUF quantized by llama.cpp's llama-quantize to q8_0, q4_0 and q4_K_M is run by both
# programs as the same file.
# Each of the N runs times llama-bench (pp P, tg T) and `moe bench decode` (P prompt tokens,
# T decode steps) on each dtype, one program at a time; the table gives min/median/max.
# Everything built or downloaded lives in build-llama/; a step whose output is there is skipped.
# OPENBLAS_CORETYPE, if set, reaches moe as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

repeat=1 prompt=128 tokens=32 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) repeat=$2; shift 2 ;;
    --n-prompt) prompt=$2; shift 2 ;;
    --n-gen) tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: bash bench/llama_cpp.sh [--repeat N] [--n-prompt P] [--n-gen T] [--threads N]" >&2
       exit 2 ;;
  esac
done

out=build-llama
model=mixtral-d1024
bundle=$out/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle
mkdir -p "$out"

# 1. llama.cpp's source, from npm, in $out/src.
bash scripts/llama_cpp_source.sh > /dev/null
# Debian's python3 with its numpy and yaml (gguf-py's imports): a pyenv python3 earlier on
# PATH may lack them.
py=/usr/bin/python3
"$py" -c 'import numpy, yaml' 2> /dev/null || { apt-get update; apt-get install -y python3-numpy python3-yaml; }

# 2. llama-bench, and llama-debug for the logits check. The bundle's history is squashed into
#    one commit, so the version is that commit and the tag node-llama-cpp gives it.
bash scripts/llama_cpp_tools.sh > /dev/null
llama_version="$(sed -n 's/.*"tag": *"\([^"]*\)".*/\1/p' "${bundle%/*}/llama.cpp.info.json"), commit $(git -C "$out/src" log -1 --format='%h of %cs')"

# 3. The model: moe writes its random checkpoint once (a --scratch file, with the expert
#    cache on); a config.json beside it makes the folder a Hugging Face Mixtral.
#    moe is built by scripts/build.sh; it is waited for, or built here when no build runs.
until [ -x build/moe ]; do
  if pgrep -x ninja > /dev/null; then
    echo "waiting for the build running now to make build/moe"; sleep 30
  else
    nice -n 10 ninja -C build moe
  fi
done
for dtype in f32 bf16; do
  dir=$out/$model-$dtype
  if [ ! -f "$dir/model.safetensors" ]; then
    ./build/moe bench decode --random $model --dtype $dtype --expert-cache 8 --scratch "$dir" \
      --n-prompt 1 --n-gen 1 > /dev/null
    mv "$dir/$model-$dtype.safetensors" "$dir/model.safetensors"
  fi
  # random_model_config in src/cli/bench_decode.cpp, in Hugging Face's words.
  cat > "$dir/config.json" << EOF
{
  "architectures": ["MixtralForCausalLM"],
  "model_type": "mixtral",
  "vocab_size": 32000,
  "hidden_size": 1024,
  "intermediate_size": 2816,
  "num_hidden_layers": 8,
  "num_attention_heads": 16,
  "num_key_value_heads": 8,
  "num_local_experts": 8,
  "num_experts_per_tok": 2,
  "max_position_embeddings": 4096,
  "rope_theta": 1000000.0,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "$([ $dtype = f32 ] && echo float32 || echo bfloat16)"
}
EOF
  if [ ! -f "$dir.gguf" ]; then
    PYTHONPATH=$out/src/gguf-py "$py" bench/llama_cpp.py gguf "$dir" "$dir.gguf.part"
    mv "$dir.gguf.part" "$dir.gguf"
  fi
  # Same weights, same function: llama.cpp's last-position logits for a short prompt (its ids
  # saved beside them) against moe's for the same ids, once per GGUF.
  check=$dir.logits.txt
  if [ ! -f "$check" ]; then
    rm -rf "$dir.logits"
    "$out/cmake/bin/llama-debug" -m "$dir.gguf" -p "the same weights" -t "$threads" -c 64 \
      --save-logits --logits-output-dir "$dir.logits" > "$dir.logits.log" 2>&1
    ids=$(od -An -v -td4 "$dir.logits/llamacpp-$model-$dtype-tokens.bin" | xargs | tr ' ' ,)
    ./build/moe logits --model "$dir" --ids "$ids" --out "$dir.logits/moe.bin" 2> /dev/null
    echo "tokens $ids: $("$py" bench/llama_cpp.py logits \
      "$dir.logits/llamacpp-$model-$dtype.bin" "$dir.logits/moe.bin")" > "$check"
  fi
  echo "logits $dtype, llama.cpp against moe: $(cat "$check")"
done

# The quantized files: the f32 GGUF through llama.cpp's own llama-quantize. moe runs those
# very files (the f32 and bf16 rows run the Hugging Face folders, the same weights).
for dtype in q8_0 q4_0 q4_k_m; do
  if [ ! -f "$out/$model-$dtype.gguf" ]; then
    "$out/cmake/bin/llama-quantize" "$out/$model-f32.gguf" "$out/$model-$dtype.gguf.part" \
      "${dtype^^}" > "$out/$model-$dtype.quantize.log" 2>&1
    mv "$out/$model-$dtype.gguf.part" "$out/$model-$dtype.gguf"
  fi
done

# 4. The runs, one program at a time.
results=$out/results
rm -rf "$results" && mkdir -p "$results"
for run in $(seq "$repeat"); do
  for dtype in f32 bf16 q8_0 q4_0 q4_k_m; do
    gguf=$out/$model-$dtype.gguf
    ours=$out/$model-$dtype
    [ -d "$ours" ] || ours=$gguf
    "$out/cmake/bin/llama-bench" -m "$gguf" -p "$prompt" -n "$tokens" -t "$threads" -o json \
      > "$results/llama-$dtype-$run.json" 2> "$results/llama-$dtype-$run.log"
    ./build/moe --threads "$threads" bench decode --model "$ours" --n-prompt "$prompt" \
      --n-gen "$tokens" --json > "$results/moe-$dtype-$run.json" 2> "$results/moe-$dtype-$run.log"
  done
done

echo
echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores;" \
  "OPENBLAS_CORETYPE ${OPENBLAS_CORETYPE:-unset}; llama.cpp $llama_version"
"$py" bench/llama_cpp.py table "$results"
