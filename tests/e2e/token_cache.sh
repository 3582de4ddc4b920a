#!/usr/bin/env bash
# Tokens prepared once (text/token_cache.h), through the CLI, in a cache folder of its own:
#  1. a second fresh run on the same corpus reuses the tokenizer and the tokens (its log says
#     so, and neither tokenizer training nor tokenizing runs again), and its run folder refers
#     to the cache instead of holding a copy; `moe eval` reads them there;
#  2. a cache entry changed on disk is detected by its digest and rebuilt to the same bytes;
#  3. a resumed run whose entry is gone rebuilds it from the recorded corpus;
#  4. --copy-data keeps a self-contained run; $XDG_CACHE_HOME is the default place;
#  5. Ctrl-C while the corpus is tokenized: exit 130 at once, one line, no run folder, no
#     half-written entry; a phase over a second shows a progress line.
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 24 | gzip > "$work/corpus.jsonl.gz"
cache=$work/cache
common=(--config "$src/tests/cases/tiny_model.json" --corpus "$work/corpus.jsonl.gz"
        --save-every 1 --batch-size 2 --seq-len 16 --eval-every 2 --eval-batches 1
        --warmup 1 --quiet --no-sample)
# train ARGS...: a run of $steps steps (default 2), its stderr in $work/err.
train() {
  "$moe" --threads 1 train --steps "${steps:-2}" "$@" 2> "$work/err" > /dev/null ||
    fail "train $*: $(cat "$work/err")"
}
entry_of() { grep -o '"cache_entry": "[^"]*"' "$1/data/source.json" | cut -d'"' -f4; }

# 1. The second run reuses everything.
train --out "$work/first" --cache-dir "$cache" "${common[@]}"
grep -q "tokens: tokenized into the cache" "$work/err" || fail "first run: $(cat "$work/err")"
train --out "$work/second" --cache-dir "$cache" "${common[@]}"
grep -q "tokens: reused from the cache" "$work/err" || fail "second run did not reuse the cache"
if grep -q -e "training a" -e "tokenizing" -e "reading corpus" "$work/err"; then
  fail "second run prepared again: $(cat "$work/err")"
fi
entry=$(entry_of "$work/second")
[ -n "$entry" ] && [ "$entry" = "$(entry_of "$work/first")" ] || fail "runs name different entries"
[ ! -e "$work/second/data/train.tokens" ] || fail "the run folder holds a copy of the tokens"
cmp -s "$work/first/tokenizer.model" "$work/second/tokenizer.model" || fail "tokenizers differ"
cmp -s <(grep -o '"loss":[^,]*' "$work/first/metrics.jsonl") \
       <(grep -o '"loss":[^,]*' "$work/second/metrics.jsonl") || fail "the two runs' losses differ"
"$moe" --threads 1 eval --model "$work/second" --json > "$work/eval.json" 2> "$work/eval.err" ||
  fail "eval of a run whose tokens are cached: $(cat "$work/eval.err")"
echo "second fresh run: tokenizer and tokens reused from $entry"

# 2. A changed entry is rebuilt, never used.
cp "$entry/train.tokens" "$work/train.tokens.good"
printf '\x7f' | dd of="$entry/train.tokens" bs=1 seek=100 conv=notrunc status=none
train --out "$work/third" --cache-dir "$cache" "${common[@]}"
grep -q "train.tokens' does not match its digest; building the entry again" "$work/err" ||
  fail "corruption not reported: $(cat "$work/err")"
cmp -s "$entry/train.tokens" "$work/train.tokens.good" || fail "rebuilt entry differs"
rm "$entry/entry.json"  # a half-written entry: its manifest comes last
train --out "$work/fourth" --cache-dir "$cache" "${common[@]}"
grep -q "half-written" "$work/err" || fail "half-written entry not reported"
echo "changed and half-written entries: detected and rebuilt"

# 3. Resume with the cache gone.
steps=1 train --out "$work/resumed" --cache-dir "$cache" "${common[@]}"
rm -rf "$cache"
"$moe" --threads 1 train --resume "$work/resumed" --steps 2 --quiet --no-sample 2> "$work/err" \
  > /dev/null || fail "resume without the cache entry: $(cat "$work/err")"
grep -q "rebuilding it from corpus" "$work/err" || fail "resume: $(cat "$work/err")"
cmp -s "$entry/train.tokens" "$work/train.tokens.good" || fail "resume rebuilt other tokens"
echo "resume: the missing entry was rebuilt from the corpus"
# A run whose data/ folder is gone (neither token files nor the cache's name for them): the
# error names the files it looked for.
rm -rf "$work/resumed/data"
if "$moe" --threads 1 train --resume "$work/resumed" --steps 3 --quiet --no-sample \
     2> "$work/err" > /dev/null; then
  fail "resume without data/ succeeded"
fi
tail -n 1 "$work/err" | grep -q "^moe: error: .*data/train.tokens' nor '.*data/source.json'" ||
  fail "resume without data/: $(cat "$work/err")"
echo "resume without data/: $(tail -n 1 "$work/err")"

# 4. --copy-data, and the default cache folder.
train --out "$work/copied" --cache-dir "$cache" --copy-data "${common[@]}"
cmp -s "$work/copied/data/train.tokens" "$work/train.tokens.good" || fail "--copy-data"
XDG_CACHE_HOME=$work/xdg train --out "$work/default" "${common[@]}"
ls "$work"/xdg/moe/tokens/*/train.tokens > /dev/null || fail "no entry under \$XDG_CACHE_HOME/moe"
echo "--copy-data holds the tokens; \$XDG_CACHE_HOME/moe is the default cache"

# 5. Ctrl-C while tokenizing: a slice of the corpus that takes a few seconds to tokenize.
{ zcat "$src/data/corpus.jsonl.gz" || true; } | head -n 6000 | gzip > "$work/large.jsonl.gz"
large=(--config "$src/tests/cases/tiny_model.json" --corpus "$work/large.jsonl.gz"
       --cache-dir "$work/large-cache" --steps 1 --batch-size 2 --seq-len 16 --no-sample)
"$moe" --threads 1 train --out "$work/large" "${large[@]}" > /dev/null 2> "$work/large.err" &
pid=$!
# Wait for the tokenizing phase, then interrupt it.
for _ in $(seq 600); do
  grep -q "tokenizing the corpus" "$work/large.err" 2> /dev/null && break
  sleep 0.1
done
grep -q "tokenizing the corpus" "$work/large.err" ||
  { kill "$pid"; fail "no progress line while tokenizing: $(cat "$work/large.err")"; }
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 130 ] || fail "Ctrl-C while tokenizing: exit $rc, expected 130: $(cat "$work/large.err")"
grep -q "interrupted by Ctrl-C before the first step" "$work/large.err" || fail "no message"
[ ! -e "$work/large" ] || fail "Ctrl-C left the run folder behind"
if ls "$work/large-cache/tokens/" 2> /dev/null | grep -q .; then
  fail "Ctrl-C left a token entry: $(ls -a "$work/large-cache/tokens/")"
fi
echo "Ctrl-C while tokenizing: exit 130, no folder, no entry"
