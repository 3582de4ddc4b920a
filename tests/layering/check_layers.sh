#!/usr/bin/env bash
# Builds every layering probe (tests/layering/CMakeLists.txt): "<probe> builds" must build;
# "<probe> <header>" must fail, and fail because <header> is not found from that layer.
# Usage: check_layers.sh BUILD_DIR PROBES_FILE
set -uo pipefail
build=$1 probes=$2
failures=0 count=0
while read -r probe expect; do
  [[ -z "$probe" ]] && continue
  count=$((count + 1))
  output=$(cmake --build "$build" --target "$probe" 2>&1)
  status=$?
  if [[ "$expect" == builds ]]; then
    if ((status != 0)); then
      echo "FAIL: $probe should build (a layer including itself and the layers it links):"
      echo "$output" | grep -m5 -E "error|Error"
      failures=$((failures + 1))
    fi
  elif ((status == 0)); then
    echo "FAIL: $probe built: $expect is reachable from a layer that does not link it"
    failures=$((failures + 1))
  elif ! grep -qF "$expect: No such file or directory" <<<"$output"; then
    echo "FAIL: $probe failed, but not for want of $expect:"
    echo "$output" | grep -m5 -E "error|Error"
    failures=$((failures + 1))
  fi
done <"$probes"
echo "$count probes, $failures wrong"
((count > 0 && failures == 0))
