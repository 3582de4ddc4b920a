#!/usr/bin/env bash
# docs/CLI.md is the CLI's own help text, every command's, so that the two cannot disagree:
#
#   bash scripts/cli_doc.sh build/moe > docs/CLI.md
#
# The test e2e.cli_doc regenerates it and fails when docs/CLI.md differs.
set -euo pipefail
moe=${1:-build/moe}

# The commands under `moe <path>`, as its help lists them after "Subcommands:".
subcommands() {
  "$moe" "$@" --help | sed -n '/^Subcommands:/,$p' | sed -n 's/^  \([a-z][a-z-]*\)  .*/\1/p'
}

section() {
  local title="moe${*:+ $*}"
  printf '## `%s`\n\n```text\n' "$title"
  "$moe" "$@" --help
  printf '```\n\n'
}

cat <<'HEAD'
# The `moe` command line

Generated from the help text by `bash scripts/cli_doc.sh build/moe > docs/CLI.md`; the test
`e2e.cli_doc` fails when this file and `moe <command> --help` disagree. Exit codes: 0 success,
2 bad input (a one-line `moe: error: ...` on stderr), 1 internal failure; 130 or 143 after
Ctrl-C or SIGTERM.

HEAD
section
for command in $(subcommands); do
  section "$command"
  for sub in $(subcommands "$command"); do section "$command" "$sub"; done
done
