#!/usr/bin/env bash
# mechlab vs TransformerLens: forward / run_with_cache time and peak memory on this machine,
# GPT-2-small shape, batch 8 x 128 tokens. Prints a table and writes
# build/bench/runtime_vs_transformerlens.json. Options (passed on):
#   --repeats N (10)  --warmup N (2)  --threads N (all cores)  --device cpu|cuda (cpu)
# e.g.  bash scripts/bench/runtime_vs_transformerlens.sh --repeats 3 --warmup 1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
if [ ! -x build/mechlab ]; then
  echo "runtime_vs_transformerlens: $ROOT/build/mechlab not found; build first: bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/fixtures/ref_env.sh
exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" \
  scripts/bench/runtime_vs_transformerlens.py "$@"
