#!/usr/bin/env bash
# End to end: crafted files from elsewhere make the CLI exit 2 with one line on stderr,
# never crash (a segfault is exit 139) or report an internal error (exit 1).
#  1. the ~100-byte model.safetensors whose [2^31, 2^31] F32 tensor needs 2^64 bytes, which
#     wrapped to 0: generation maps the file, and its header reader refuses it beside any
#     config (the loader's size check, for eval and export, is test_model_config's)
#  2. a config whose parameter count overflows 64 bits (`moe params --config`)
set -euo pipefail
moe=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

expect_one_line_exit_2() {  # what needle command...
  local what=$1 needle=$2
  shift 2
  local code=0
  "$@" > /dev/null 2> "$work/stderr" || code=$?
  if [ "$code" -ne 2 ] || [ "$(wc -l < "$work/stderr")" -ne 1 ] ||
     ! grep -q "^moe: error: .*$needle" "$work/stderr"; then
    echo "FAIL $what: exit $code, stderr:"
    cat "$work/stderr"
    exit 1
  fi
  echo "ok   $what: $(cat "$work/stderr")"
}

python3 - "$work" <<'PY'
import json, os, struct, sys
work = sys.argv[1]
header = json.dumps({"model.embed_tokens.weight": {
    "dtype": "F32", "shape": [2147483648, 2147483648], "data_offsets": [0, 0]}}).encode()
crafted = struct.pack("<Q", len(header)) + header
tiny = {"vocab_size": 1, "hidden_size": 2, "intermediate_size": 1, "num_hidden_layers": 1,
        "num_attention_heads": 1, "num_key_value_heads": 1, "max_position_embeddings": 4,
        "tie_word_embeddings": True}
default = {}  # every field at its default: the ~11M-parameter model
for name, config in [("tiny", tiny), ("default", default)]:
    os.makedirs(f"{work}/{name}")
    json.dump(config, open(f"{work}/{name}/config.json", "w"))
    open(f"{work}/{name}/model.safetensors", "wb").write(crafted)
json.dump({"hidden_size": 65536, "num_hidden_layers": 1024, "num_attention_heads": 64,
           "num_key_value_heads": 64, "moe": {"moe_intermediate_size": 1048576,
           "num_experts": 1048576, "top_k": 1}}, open(f"{work}/overflow.json", "w"))
PY

expect_one_line_exit_2 "crafted header, reader" \
  "model.safetensors: tensor 'model.embed_tokens.weight': shape \[2147483648, 2147483648\]" \
  "$moe" generate --model "$work/tiny" --prompt hi
expect_one_line_exit_2 "crafted header, default config" \
  "model.safetensors: tensor 'model.embed_tokens.weight': shape \[2147483648, 2147483648\]" \
  "$moe" generate --model "$work/default" --prompt hi
expect_one_line_exit_2 "parameter count overflow" "overflow\|must be in" \
  "$moe" params --config "$work/overflow.json"
