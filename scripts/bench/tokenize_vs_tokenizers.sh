#!/usr/bin/env bash
# mechlab vs the Rust `tokenizers` library: byte-level BPE encoding of ~10 MB of generated text,
# GPT-2 and Llama-3 styles, on this machine, in one run. Prints one table per style (rates and
# ratios against tokenizers' single-threaded encode_batch), checks that the ids are identical,
# and writes <build>/bench/tokenize_vs_tokenizers.json. Options (passed on):
#   --mb N (10)  --vocab N (16000)  --repeats N (3)  --styles gpt2,llama3  --loop  --build DIR
# e.g.  bash scripts/bench/tokenize_vs_tokenizers.sh --mb 10
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
  echo "tokenize_vs_tokenizers: $BUILD/mechlab not found; build first: bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/fixtures/ref_env.sh
MECHLAB_BUILD=$BUILD exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" \
  scripts/bench/tokenize_vs_tokenizers.py "$@"
