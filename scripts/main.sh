#!/usr/bin/env bash
# The README's first command: install, build, run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/moe bench layer
