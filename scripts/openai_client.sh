#!/usr/bin/env bash
# The official `openai` npm client, pinned, installed into build-node/ for the `moe serve` test
# (tests/e2e/serve_openai.mjs); prints the node_modules folder's absolute path on stdout, and
# nothing else there. Idempotent: skipped when that version is present. Installs nodejs and npm
# with apt when either is missing (as scripts/llama_cpp_source.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

version=5.12.0  # openai-node 5: no dependencies, the fetch of Node 18+
out=build-node
package=$out/node_modules/openai/package.json

if ! { [ -f "$package" ] && grep -q "\"version\": \"$version\"" "$package"; }; then
  if ! { command -v node && command -v npm; } > /dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "openai_client: installing nodejs and npm" >&2
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
      nodejs npm >&2
  fi
  mkdir -p "$out"
  npm install --prefix "$out" "openai@$version" --no-audit --no-fund --ignore-scripts >&2
fi
echo "$PWD/$out/node_modules"
