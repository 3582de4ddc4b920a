#!/usr/bin/env bash
# End to end: `moe export` on a run trained by `moe train` (the tiny test model: noisy top-k,
# MoE every other block, a training capacity factor), then read back by the PyTorch reference.
# Checks the refusals too: each exits 2 with one line on stderr naming the reason.
set -euo pipefail
moe=$1
src=$2
python=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 60 | gzip > "$work/corpus.jsonl.gz"
"$moe" train --out "$work/run" --config "$src/tests/cases/tiny_model.json" \
  --corpus "$work/corpus.jsonl.gz" --steps 3 --batch-size 2 --seq-len 16 --quiet --no-sample \
  > /dev/null 2>&1

# expect_refusal WORDS ARGS...: exit code 2 and one stderr line containing WORDS.
expect_refusal() {
  local words=$1 rc=0
  shift
  "$moe" export "$@" 2> "$work/err" > /dev/null || rc=$?
  if [ "$rc" -ne 2 ]; then echo "FAIL: export $* exited $rc, expected 2"; cat "$work/err"; exit 1; fi
  if [ "$(wc -l < "$work/err")" -ne 1 ] || ! grep -qF -- "$words" "$work/err"; then
    echo "FAIL: export $*: expected one line naming '$words', got:"; cat "$work/err"; exit 1
  fi
  echo "refused as expected: $(cat "$work/err")"
}

# The tiny model trains with capacity_factor 1.25 and, like every token-choice model without
# eval_capacity_factor, evaluates dropless: it exports as it is.
"$moe" export --model "$work/run" --out "$work/hf"
for f in config.json generation_config.json model.safetensors tokenizer.model tokenizer_config.json; do
  [ -s "$work/hf/$f" ] || { echo "FAIL: $f missing from the export"; exit 1; }
done
grep -q '"model_type": "qwen2_moe"' "$work/hf/config.json" || { echo "FAIL: not qwen2_moe"; exit 1; }
grep -q '"eos_token_id": 2' "$work/hf/generation_config.json" || { echo "FAIL: eos id"; exit 1; }

# The export runs in `moe` itself as a Hugging Face folder: the same next-token logits as the run
# (within 1e-4: Qwen2-MoE's layout adds zero biases and routes by softmax, top-k, renormalise),
# and its tokenizer.model generates (tokenizer_config.json: no BOS, as our runs).
"$moe" logits --model "$work/run" --ids 5,9,30,2 --out "$work/run.bin" 2> /dev/null
"$moe" logits --model "$work/hf" --ids 5,9,30,2 --out "$work/hf.bin" 2> /dev/null
"$python" -c '
import struct, sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
assert len(a) == len(b) > 0, (len(a), len(b))
x, y = (struct.unpack(f"<{len(a) // 4}f", d) for d in (a, b))
worst = max(abs(p - q) for p, q in zip(x, y))
assert worst < 1e-4, f"run and export logits differ by {worst}"
print(f"run and export logits agree within {worst:.1e}")' "$work/run.bin" "$work/hf.bin"
"$moe" generate --model "$work/hf" --prompt "The" -n 5 --temperature 0 > /dev/null 2>&1 ||
  { echo "FAIL: moe generate on the export"; exit 1; }

expect_refusal "not empty" --model "$work/run" --out "$work/hf"
expect_refusal "the run folder itself" --model "$work/run" --out "$work/run/." --force
"$moe" export --model "$work/run" --out "$work/hf" --force --dtype bf16 > /dev/null
grep -q '"torch_dtype": "bfloat16"' "$work/hf/config.json" || { echo "FAIL: dtype"; exit 1; }
"$python" "$src/tests/reference/hf_reference.py" --tokens 5,9,30,2 --job "$work/hf" "$work/logits.safetensors"

# Sigmoid routing with a selection bias has no Hugging Face Mixtral / Qwen2-MoE equivalent.
mkdir "$work/sigmoid"
sed 's/"noisy_topk"/"sigmoid_bias"/' "$work/run/config.json" > "$work/sigmoid/config.json"
grep -q sigmoid_bias "$work/sigmoid/config.json" || { echo "FAIL: test setup"; exit 1; }
expect_refusal "sigmoid_bias" --model "$work/sigmoid" --out "$work/hf_sigmoid"
echo "PASS"
