#!/usr/bin/env bash
# mechlab vs a PyTorch + TransformerLens training loop: tokens/s of the induction
# recipe's model on this machine, same run. Options (passed on):
#   --steps N (50)  --warmup N (5)  --threads N (all cores)  --device cpu|cuda (cpu)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
if [ ! -x "${MECHLAB_BIN:-build/mechlab}" ]; then
  echo "train_vs_pytorch: ${MECHLAB_BIN:-build/mechlab} not found; build first: bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/fixtures/ref_env.sh
exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" scripts/bench/train_vs_pytorch.py "$@"
