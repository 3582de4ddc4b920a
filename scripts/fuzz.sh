#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang and runs each for SECONDS (default 30),
# starting from the seeds in fuzz/seeds/<target>/. Every target runs; a crash, leak, timeout
# or out-of-memory leaves its input in build-fuzz/failures-<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
bash scripts/setup.sh
cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build build-fuzz -j2
status=0
# A run folder is four files in one input: its seeds are larger than a config's.
# A tokenizer.json holds its 256 byte tokens: 8 KiB leaves room for merges and a text.
# A GGUF seed from gguf-py holds metadata of every type and eleven tensors: 8 KiB holds it.
declare -A max_len=([safetensors]=4096 [gguf]=8192 [model_config]=4096 [moe_config]=4096
                    [run_folder]=16384 [bpe_tokenizer]=8192 [shard_index]=8192 [hf_config]=4096)
for target in safetensors gguf model_config moe_config run_folder bpe_tokenizer shard_index \
              hf_config; do
  corpus=build-fuzz/corpus-$target
  failures=build-fuzz/failures-$target  # this run's failing inputs only
  rm -rf "$failures"
  mkdir -p "$corpus" "$failures"
  echo "fuzz_$target: ${seconds}s"
  (cd build-fuzz && ./fuzz_$target -max_total_time="$seconds" -max_len="${max_len[$target]}" \
     -rss_limit_mb=2048 -artifact_prefix="failures-$target/" -print_final_stats=1 \
     "corpus-$target" "../fuzz/seeds/$target" 2>&1 |
     grep -E "stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|Test unit written" || true)
  if [ -n "$(ls -A "$failures")" ]; then
    echo "fuzz_$target: failure inputs left in $failures/"
    status=1
  fi
done
exit $status
