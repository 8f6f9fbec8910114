#!/usr/bin/env bash
# mechlab ACDC vs the reference ACDC (Conmy et al.'s TLACDCExperiment at bc99ace8): same model,
# prompts, tau and threads, same machine. Prints reference seconds, mechlab seconds, their ratio,
# the edges each keeps and whether the circuits are identical; writes
# build/bench/acdc_vs_reference.json.
# Options (passed on): --acdc-repo DIR (required: a checkout of ArthurConmy/Automatic-Circuit-
#   Discovery at bc99ace8)  --threshold T (0.002)  --threads N (all cores)
#   --model CKPT.h5 --dataset PAIRS.h5 (default: random 4-layer d_model 256 model, 32 x 16 pairs)
#   --ablation corrupted|zero  --abs-value  --reference-only  --mechlab PATH (build/mechlab)
# mechlab runs `mechlab discover JOBFILE --force` (method acdc); without a built binary only the
# reference is timed.
# e.g.  bash scripts/bench/acdc_vs_reference.sh --acdc-repo ~/src/acdc --threads 2
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MECHLAB_BIN=${MECHLAB_BIN:-build/mechlab}
extra=()
if [ ! -x "$MECHLAB_BIN" ]; then
  echo "acdc_vs_reference: $ROOT/$MECHLAB_BIN not found; timing the reference only" \
       "(build first: bash scripts/test.sh)" >&2
  extra+=(--reference-only)
else
  export MECHLAB_BIN=$(cd "$(dirname "$MECHLAB_BIN")" && pwd)/$(basename "$MECHLAB_BIN")
fi
bash scripts/fixtures/ref_env.sh
exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" \
  scripts/bench/acdc_vs_reference.py "${extra[@]}" "$@"
