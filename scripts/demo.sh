#!/usr/bin/env bash
# The main job on a built-in default: sets up (idempotent), builds, creates a
# small model, shows its hook points, runs it with caching and prints the
# top-k next-token predictions and a summary of the activation cache; then
# makes an induction dataset and writes the model's residual stream over it
# to an activation store, and inspects the store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
mechlab_build
ML="$MECHLAB_BUILD/mechlab"
model="$MECHLAB_BUILD/demo/tiny.h5"
mkdir -p "$(dirname "$model")"
[ -f "$model" ] || "$ML" new "$model" --preset tiny --seed 0
"$ML" info "$model"
echo
"$ML" run "$model" --prompt-tokens 11 42 7 99 11 42 7 --top-k 5 --cache 'blocks.*'
echo
data="$MECHLAB_BUILD/demo/induction.h5"
store="$MECHLAB_BUILD/demo/resid_post.h5"
"$ML" dataset make induction --out "$data" --n 256 --set half_len=20 --set d_vocab=512
"$ML" dataset inspect "$data" --examples 1
"$ML" cache "$model" "$data" --hooks 'blocks.*.hook_resid_post' --out "$store" --overwrite
"$ML" store inspect "$store" --check
