#!/usr/bin/env bash
# docs/ARCHITECTURE.md's layer map, between "<!-- layers:begin -->" and "<!-- layers:end -->",
# must list each layer and the layers it links exactly as the build does (LAYERS_FILE, written
# by tests/layering/CMakeLists.txt at configure time).
# Usage: check_map.sh LAYERS_FILE ARCHITECTURE_MD
set -euo pipefail
layers=$1 doc=$2
documented=$(sed -n '/<!-- layers:begin -->/,/<!-- layers:end -->/p' "$doc" | grep -E '^[a-z]+:' || true)
if [[ "$documented" != "$(cat "$layers")" ]]; then
  echo "docs/ARCHITECTURE.md's layer map differs from the build's graph:"
  diff <(echo "$documented") "$layers"
  exit 1
fi
echo "the map matches the build's graph ($(wc -l <"$layers") layers)"
