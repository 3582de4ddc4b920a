#!/usr/bin/env bash
# The sparsity study (docs/STUDY.md): builds moe, then trains what is not yet done and rewrites
# the study's table and curves. Arguments go to scripts/study.py (--dry-run lists what is left).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh > /dev/null
exec /usr/bin/python3 scripts/study.py "$@"
