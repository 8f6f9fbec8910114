#!/usr/bin/env bash
# mechlab vs SAELens 6.54.12 on the toy-superposition problem (512 unit features in 256
# dimensions, each active with probability 5/512, magnitudes U[0, 1]): a TopK SAE (d_sae 1024,
# k 8, batch 1024, Adam lr 1e-3) trained by each until its decoder's mean max cosine similarity
# (MMCS) with the true features reaches 0.99, side by side in one run, same threads. Prints each
# one's time and samples to MMCS 0.99 and the ratio mechlab / SAELens (the issue asks <= 0.5).
# Options (passed on): --threads N (2)  --target T (0.99)  --max-steps N (3000)
#   --check-every N (25)  --seed S (1)  --mechlab PATH (build/mechlab)
# e.g.  bash scripts/bench/sae_toy_vs_saelens.sh --threads 2
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
bash scripts/fixtures/ref_env.sh
exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" scripts/bench/sae_toy_vs_saelens.py "$@"
