#!/usr/bin/env bash
# Sets up what is needed (idempotent), builds, and runs every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
mechlab_build
ctest --test-dir "$MECHLAB_BUILD" --output-on-failure -j "$(nproc)" "$@"
