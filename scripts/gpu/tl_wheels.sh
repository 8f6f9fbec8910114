#!/usr/bin/env bash
# Downloads into .tl-wheels/ (ignored) the Python wheels that TransformerLens
# 2.18 needs on the lent GPU machine beyond what its image holds, so that
# scripts/gpu/tl_compare.sh can run the mechlab-vs-TransformerLens benchmark
# there (the machine has no package registry). Runs on the development machine.
#
#   bash scripts/gpu/tl_wheels.sh
#
# The image has torch 2.11, numpy, pandas, pyarrow, h5py, einops, jaxtyping,
# safetensors, rich, tqdm and transformers 5.x (docs/GPU.md). TransformerLens
# 2.18 imports better_abc, typeguard and datasets (+ dill, multiprocess) at
# import time, and is pinned here, as in the fixtures' venv, to transformers
# 4.57, which needs tokenizers < 0.23 and huggingface_hub < 1.0: those three
# travel too and shadow the image's. Versions come from
# scripts/fixtures/ref_requirements.txt, so both venvs run the same code.
# About 17 MB; idempotent (pip skips wheels already downloaded).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=$ROOT/.tl-wheels
LOCK=$ROOT/scripts/fixtures/ref_requirements.txt
NAMES=(transformer-lens better-abc typeguard datasets dill multiprocess transformers tokenizers huggingface_hub)

pins=()
for n in "${NAMES[@]}"; do
  pin=$(grep -i -E "^${n//[-_]/[-_]}==" "$LOCK" || true)
  [ -n "$pin" ] || { echo "tl_wheels: $n is not pinned in $LOCK" >&2; exit 1; }
  pins+=("$pin")
done

mkdir -p "$DEST"
# The GPU image's python is CPython 3.12 on x86-64 (docs/GPU.md).
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${pins[@]}"
echo "tl_wheels: $(find "$DEST" -name "*.whl" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST: ${pins[*]}"
