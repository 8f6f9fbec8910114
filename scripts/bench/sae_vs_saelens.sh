#!/usr/bin/env bash
# mechlab vs SAELens 6.54.12: TopK SAE training throughput (tokens/s) on the same config, the same
# cached activations and the same machine, in one run; prints `mechlab bench sae`'s table with
# SAELens (and a plain dense PyTorch step) as rows and the ratios against SAELens, and each side's
# peak memory. Options (passed on): --d-in N (768) --d-sae N (24576) --k N (32) --batch N (4096)
#   --steps N (5) --warmup N (1) --threads N --device cpu|cuda --tf32 --skip-torch --build DIR
# e.g. the issue's size on 2 threads:  bash scripts/bench/sae_vs_saelens.sh --threads 2
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BUILD=${MECHLAB_BUILD:-build}
prev=""
for a in "$@"; do
  if [ "$prev" = "--build" ]; then BUILD=$a; fi
  prev=$a
done
if [ ! -x "$BUILD/mechlab" ]; then
  echo "sae_vs_saelens: $BUILD/mechlab not found; build first: bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/fixtures/ref_env.sh
MECHLAB_BUILD=$BUILD exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" \
  scripts/bench/sae_vs_saelens.py "$@"
