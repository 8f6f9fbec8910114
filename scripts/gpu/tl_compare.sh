#!/usr/bin/env bash
# On the lent GPU machine: mechlab vs TransformerLens 2.18 on CUDA, the same
# GPT-2-small-shaped model and tokens (scripts/bench/runtime_vs_transformerlens.py).
# Needs a mechlab that scripts/gpu/run.sh built there (build-gpu, kept on a warm
# machine) and TransformerLens's wheels (scripts/gpu/tl_wheels.sh, here):
#
#   device run, carry [".gpu-bundle", ".tl-wheels"]:
#     bash scripts/gpu/tl_compare.sh [--batch 8 --pos 128 --repeats 10 ...]
#
# Options are passed to the driver; --device cuda is added. Writes
# $OUT/runtime_vs_transformerlens.{txt,json} (or gpu-results/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WHEELS=$ROOT/.tl-wheels
BUILD=${MECHLAB_GPU_BUILD:-$ROOT/build-gpu}
BUNDLE=${MECHLAB_GPU_BUNDLE:-$ROOT/.gpu-bundle}
OUTDIR=${OUT:-$ROOT/gpu-results}
SITE=${MECHLAB_TL_SITE:-/tmp/mechlab-tl-site}
die() { echo "tl_compare: $*" >&2; exit 1; }

ls "$WHEELS"/*.whl >/dev/null 2>&1 ||
  die "no wheels in $WHEELS: run scripts/gpu/tl_wheels.sh on the development machine and carry .tl-wheels"
[ -x "$BUILD/mechlab" ] || die "no $BUILD/mechlab: run scripts/gpu/run.sh first on this machine"
[ -f "$BUNDLE/env.sh" ] || die "no $BUNDLE/env.sh (mechlab's shared libraries): carry .gpu-bundle"
# shellcheck disable=SC1091
source "$BUNDLE/env.sh"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import transformer_lens, transformers; print("tl_compare: transformer_lens", transformer_lens.__file__, "transformers", transformers.__version__)'

mkdir -p "$OUTDIR"
MECHLAB_BIN=$BUILD/mechlab PYTHONUNBUFFERED=1 python3 "$ROOT/scripts/bench/runtime_vs_transformerlens.py" \
  --device cuda "$@" 2>&1 | tee "$OUTDIR/runtime_vs_transformerlens.txt"
cp "$ROOT/build/bench/runtime_vs_transformerlens.json" "$OUTDIR/"
