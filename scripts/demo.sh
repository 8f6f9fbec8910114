#!/usr/bin/env bash
# The main job on a built-in default: sets up (idempotent), builds, and takes
# the shipped induction model (apps/models/induction.h5, trained by the
# recipe beside it): shows its config, runs it on repeated tokens with
# caching (top-k predictions, cache summary), scores its heads with the head
# detector, then makes an induction dataset, writes the model's residual
# stream over it to an activation store, inspects the store and probes it
# (and each head) for "this token appeared earlier". Last, it
# runs the built-in discovery job file (apps/jobs/demo.yaml): circuits of the
# shipped IOI and induction models by ACDC, EAP and EAP-IG, written to
# runs/demo/ as JSON, HDF5 and Graphviz pictures, each evaluated
# (faithfulness), with the heads each circuit contains.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
mechlab_build
ML="$MECHLAB_BUILD/mechlab"
# The built-in default: the induction recipe's model (apps/models/README.md),
# a 2-layer attention-only transformer trained by `mechlab train`.
model=apps/models/induction.h5
"$ML" info "$model" | sed -n '1,12p'
echo
# Repeated random tokens: after "... 9" the model should predict 150, the
# token that followed 9 the first time (induction).
"$ML" run "$model" --prompt-tokens 0 11 45 78 200 13 9 150 7 31 40 11 45 78 200 13 9 --top-k 3 \
  --cache 'blocks.*.attn.hook_pattern'
echo
# Which heads do it: a previous-token head in layer 0, induction heads in layer 1.
"$ML" heads "$model" --type previous_token --type induction --exclude-bos
echo
data="$MECHLAB_BUILD/demo/induction.h5"
store="$MECHLAB_BUILD/demo/resid_post.h5"
mkdir -p "$(dirname "$data")"
"$ML" dataset make induction --out "$data" --overwrite --n 256 --set half_len=20 --set min_half_len=5 \
  --set d_vocab=256 --set seed=7
"$ML" dataset inspect "$data" --examples 1
"$ML" cache "$model" "$data" --hooks 'blocks.*.hook_resid_post' --out "$store" --overwrite
"$ML" store inspect "$store" --check
echo
# Linear probes for "this token appeared earlier in the prompt": one per
# layer from the store (with a control task and selectivity), then one per
# head of attn.hook_z from the model, each head's direction also projected
# out to see whether the model needs it (probes.svg: a layer x head grid).
"$ML" probe "$store" "$data" --hooks 'blocks.*.hook_resid_post' --label repeated --max-iter 300 \
  --out "$MECHLAB_BUILD/demo/probes" --overwrite --resamples 200
"$ML" probe "$model" "$data" --hooks 'blocks.*.attn.hook_z' --split-heads --label repeated --ablate \
  --out "$MECHLAB_BUILD/demo/probes-heads" --overwrite --resamples 200
echo
# Circuit discovery from the built-in job file: dataset steps (IOI pairs,
# induction pairs), then ACDC (KL to the clean run) and EAP / EAP-IG (logit
# difference) on the IOI and induction models. The summary table gives each
# circuit's metric and faithfulness; the last lines list the heads (and
# MLPs) each circuit contains. A rerun skips what is done; --force redoes it.
"$ML" discover apps/jobs/demo.yaml --threads 2
