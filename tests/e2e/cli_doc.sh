#!/usr/bin/env bash
# docs/CLI.md is the help text of every command, as scripts/cli_doc.sh writes it: an option
# added, renamed or reworded without regenerating the page fails here.
set -euo pipefail
moe=$1 src=$2
if ! diff -u "$src/docs/CLI.md" <(bash "$src/scripts/cli_doc.sh" "$moe"); then
  echo "docs/CLI.md differs from the help text: bash scripts/cli_doc.sh build/moe > docs/CLI.md" >&2
  exit 1
fi
