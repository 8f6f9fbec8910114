#!/usr/bin/env bash
# Fuzzes the safetensors header parser with libFuzzer for a bounded time.
#
#   bash scripts/fuzz.sh [SECONDS]        # default 60
#
# Compiles tests/fuzz/safetensors_fuzz.cpp with core/formats/safetensors_header.cpp
# standalone (clang++, -fsanitize=fuzzer,address,undefined; no LibTorch),
# seeds a corpus from valid files (the Hugging Face fixtures and a few small
# hand-made files), runs, and exits non-zero on any finding. Crashing inputs
# are written to $MECHLAB_FUZZ_DIR/crashes/ (default build-fuzz/ in the checkout;
# the corpus there grows across runs). Reproduce one with
#   build-fuzz/safetensors_fuzz build-fuzz/crashes/crash-<hash>
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${MECHLAB_FUZZ_DIR:-$root/build-fuzz}
CXX=${FUZZ_CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz.sh: $CXX not found (scripts/setup.sh installs clang)" >&2; exit 1; }

mkdir -p "$out/corpus" "$out/seeds" "$out/crashes"
echo "[fuzz] building $out/safetensors_fuzz"
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root" "$root/tests/fuzz/safetensors_fuzz.cpp" "$root/core/formats/safetensors_header.cpp" \
  -o "$out/safetensors_fuzz"

# Seeds: the headers of the fixture safetensors files with every dimension cut
# to at most 2 (real names, dtypes and layouts, but small enough for libFuzzer
# to mutate quickly), plus small files exercising metadata, scalars, zero-size
# tensors and several dtypes.
rm -f "$out"/seeds/*
python3 - "$out/seeds" "$root/tests/data" <<'PY'
import glob, json, struct, sys, os
SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
def write(name, header, data=b""):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
for i, path in enumerate(sorted(glob.glob(os.path.join(sys.argv[2], "**", "*.safetensors"), recursive=True))):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    offset = 0
    for name, entry in sorted(header.items()):
        if name == "__metadata__":
            continue
        entry["shape"] = [min(d, 2) for d in entry["shape"]]
        size = SIZES[entry["dtype"]]
        for d in entry["shape"]:
            size *= d
        entry["data_offsets"] = [offset, offset + size]
        offset += size
    write(f"fixture_{i}", header, bytes(range(256)) * (offset // 256) + bytes(offset % 256))
write("empty", {})
write("one_f32", {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, bytes(24))
write("mixed", {"__metadata__": {"format": "pt"},
                "a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
                "b": {"dtype": "BF16", "shape": [3], "data_offsets": [8, 14]},
                "c": {"dtype": "I8", "shape": [0, 5], "data_offsets": [14, 14]},
                "d": {"dtype": "BOOL", "shape": [], "data_offsets": [14, 15]}}, bytes(15))
PY
echo "[fuzz] $(ls "$out/seeds" | wc -l) seed files; running for ${seconds}s"

set +e
"$out/safetensors_fuzz" "$out/corpus" "$out/seeds" \
  -dict="$root/tests/fuzz/safetensors.dict" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$out/crashes/" \
  2>&1 | tee "$out/last_run.log" | grep -E '^(INFO|#[0-9]+.*(DONE|pulse)|stat::|==[0-9]+==|SUMMARY|invariant)' 
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "[fuzz] FINDING (exit $rc): see $out/last_run.log and $out/crashes/" >&2
  exit "$rc"
fi
echo "[fuzz] no findings in ${seconds}s; corpus $(ls "$out/corpus" | wc -l) inputs ($out/corpus)"
