#!/usr/bin/env bash
# mechlab vs TransformerLens: the full head-output-by-position patching sweep
# (get_act_patch_attn_head_out_by_pos), GPT-2-small shape, 32 prompts x 20 tokens, same weights
# and tokens, same machine. Prints a table and writes build/bench/patch_vs_transformerlens.json.
# Options (passed on): --sample N (24 TL configs, extrapolated)  --full (TL's whole sweep)
#   --threads N (all cores)  --device cpu|cuda (cpu)  --mechlab PATH (build/mechlab)
# e.g.  bash scripts/bench/patch_vs_transformerlens.sh --sample 12
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MECHLAB_BIN=${MECHLAB_BIN:-build/mechlab}
if [ ! -x "$MECHLAB_BIN" ]; then
  echo "patch_vs_transformerlens: $ROOT/$MECHLAB_BIN not found; build first: bash scripts/test.sh" >&2
  exit 1
fi
export MECHLAB_BIN=$(cd "$(dirname "$MECHLAB_BIN")" && pwd)/$(basename "$MECHLAB_BIN")
bash scripts/fixtures/ref_env.sh
exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" \
  scripts/bench/patch_vs_transformerlens.py "$@"
