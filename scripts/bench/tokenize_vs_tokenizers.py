#!/usr/bin/env python3
"""mechlab vs the Rust `tokenizers` library (0.22.2): byte-level BPE encoding speed, one machine.

Run it through the wrapper (checks the build and the reference venv):

    bash scripts/bench/tokenize_vs_tokenizers.sh [--mb 10] [--vocab 16000] [--repeats 3] [--styles gpt2,llama3]

What it does, in one run:
 1. writes --mb MB of generated text (seeded; English-like pseudo-words with a Zipf-like
    frequency, numbers, punctuation, code lines, some non-ASCII words), documents separated by
    blank lines, to <build>/bench/tokenize_text.txt;
 2. per style, trains a byte-level BPE tokenizer (--vocab tokens) with `tokenizers` on the first
    2 MB of it (GPT-2 style: ByteLevel pre-tokenizer; Llama-3 style: Split(Llama-3 regex) +
    ByteLevel, ignore_merges) and saves <build>/bench/tokenize_<style>/tokenizer.json;
 3. times `tokenizers` in child processes on the same documents: `encode_batch` on one thread
    (TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1: the baseline, as mechlab's encoder is
    single-threaded), `encode_batch` on every core, and with --loop a Python loop of `encode`; the first
    pass (cold word cache) apart, then the median of --repeats passes;
 4. runs `mechlab bench tokenize` on the same text with those timings (--baseline-json), which
    prints one table with both rates and the ratios (time / time of tokenizers 1-thread);
 5. checks that mechlab's ids equal `tokenizers`' ids for the whole text, and fails otherwise.
Writes <build>/bench/tokenize_vs_tokenizers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stats import summarize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BASELINE = "tokenizers encode_batch, 1 thr"

CHILD = r'''
import json, sys, time
import numpy as np
from tokenizers import Tokenizer
tok_path, text_path, mode, repeats, ids_out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
docs = open(text_path, encoding="utf-8").read().split("\n\n")
tok = Tokenizer.from_file(tok_path)
def run():
    if mode == "loop":
        return [tok.encode(d, add_special_tokens=False).ids for d in docs]
    return [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
t0 = time.perf_counter(); out = run(); cold = (time.perf_counter() - t0) * 1e3
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); out = run(); times.append((time.perf_counter() - t0) * 1e3)
if ids_out != "-":
    np.concatenate([np.asarray(x, dtype="<i4") for x in out]).tofile(ids_out)
print(json.dumps({"cold_ms": cold, "times_ms": times, "tokens": sum(map(len, out))}))
'''


def generate_text(mb: float, seed: int) -> str:
    rng = random.Random(seed)
    syll = ["the", "an", "in", "er", "on", "at", "re", "st", "ing", "ed", "ou", "al", "or", "ti", "is", "ar",
            "ent", "ion", "ly", "de", "pro", "com", "ca", "mo", "ver", "sh", "ck", "qu", "ph", "ex"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(30000)]
    extra = ["café", "naïve", "Zürich", "Привет", "мир", "日本語", "中文", "😀", "❤️", "don't", "it's", "I'm",
             "we're", "they'll", "e.g.", "i.e.", "U.S.", "(see", "above)", "\"quoted\"", "—", "–", "…"]
    code = ["def f(x):\n    return x * 2\n", "for i in range(10):\n    print(i)\n", "if (a && b) { c++; }\n",
            "x = [1, 2, 3]  # comment\n", "    indented line\n"]
    target = int(mb * 1e6)
    parts, size = [], 0
    while size < target:
        doc = []
        for _ in range(rng.randint(2, 12)):
            if rng.random() < 0.08:
                doc.append(rng.choice(code))
                continue
            n = rng.randint(5, 25)
            sent = []
            for k in range(n):
                r = rng.random()
                if r < 0.04:
                    sent.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
                elif r < 0.07:
                    sent.append(rng.choice(extra))
                else:
                    w = words[int(rng.random() ** 3 * len(words))]
                    sent.append(w.capitalize() if k == 0 else w)
            doc.append(" ".join(sent) + rng.choice([". ", ". ", "? ", "! ", ".\n", ";  ", ":\t"]))
        text = "".join(doc)
        parts.append(text)
        size += len(text.encode("utf-8")) + 2
    return "\n\n".join(parts)


def train(style: str, text_path: str, vocab: int, out_dir: str) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    with open(text_path, encoding="utf-8") as f:
        sample = f.read(2_000_000).split("\n\n")
    if style == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample, trainer)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    return path


def run_child(tok_path: str, text_path: str, mode: str, repeats: int, ids_out: str, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads == 1:
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["RAYON_NUM_THREADS"] = "1"
    else:
        env["TOKENIZERS_PARALLELISM"] = "true"
        env.pop("RAYON_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, tok_path, text_path, mode, str(repeats), ids_out],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10.0, help="MB of generated text (default 10)")
    ap.add_argument("--vocab", type=int, default=16000, help="vocabulary of the trained tokenizers (default 16000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed warm passes, median reported (default 3)")
    ap.add_argument("--styles", default="gpt2,llama3", help="comma-separated: gpt2, llama3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loop", action="store_true", help="also time a Python loop of tokenizers' encode")
    ap.add_argument("--build", default=os.environ.get("MECHLAB_BUILD", os.path.join(ROOT, "build")),
                    help="build folder holding the mechlab binary ($MECHLAB_BUILD or build/)")
    args = ap.parse_args()

    import numpy as np
    import tokenizers

    mechlab = os.path.join(args.build, "mechlab")
    out_dir = os.path.join(args.build, "bench")
    os.makedirs(out_dir, exist_ok=True)
    text_path = os.path.join(out_dir, "tokenize_text.txt")
    text = generate_text(args.mb, args.seed)
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"text: {text_path}, {len(text.encode('utf-8')) / 1e6:.2f} MB, {text.count(chr(10) * 2) + 1} documents; "
          f"tokenizers {tokenizers.__version__}, {os.cpu_count()} CPUs")

    results = {"tokenizers_version": tokenizers.__version__, "mb": args.mb, "vocab": args.vocab,
               "cpus": os.cpu_count(), "styles": {}}
    failed = False
    for style in [s.strip() for s in args.styles.split(",") if s.strip()]:
        t0 = time.perf_counter()
        tok_path = train(style, text_path, args.vocab, os.path.join(out_dir, f"tokenize_{style}"))
        print(f"\n=== {style}: trained {tok_path} in {time.perf_counter() - t0:.1f} s")
        ref_ids = os.path.join(out_dir, f"tokenize_{style}_tokenizers.i32")
        ml_ids = os.path.join(out_dir, f"tokenize_{style}_mechlab.i32")
        single = run_child(tok_path, text_path, "batch", args.repeats, ref_ids, 1)
        parallel = run_child(tok_path, text_path, "batch", args.repeats, "-", None)
        loop = run_child(tok_path, text_path, "loop", args.repeats, "-", 1) if args.loop else None
        # Each row: median, quartiles and run count of the warm passes (bench_stats.summarize).
        rows = [
            dict(summarize(single["times_ms"]), name=BASELINE,
                 note=f"cold {single['cold_ms']:.0f} ms (one pass)"),
            dict(summarize(parallel["times_ms"]), name=f"tokenizers encode_batch, {os.cpu_count()} thr",
                 note="rayon over all cores"),
        ]
        if loop:
            rows.append(dict(summarize(loop["times_ms"]), name="tokenizers encode loop (Python)",
                             note="1 thread, per-call overhead"))
        baseline_json = os.path.join(out_dir, f"tokenize_{style}_baseline.json")
        with open(baseline_json, "w") as f:
            json.dump({"baseline": BASELINE, "rows": rows}, f)
        proc = subprocess.run([mechlab, "bench", "tokenize", "--tokenizer", tok_path, "--text-file", text_path,
                               "--repeats", str(args.repeats), "--baseline-json", baseline_json, "--ids-out", ml_ids],
                              capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        a, b = np.fromfile(ref_ids, dtype="<i4"), np.fromfile(ml_ids, dtype="<i4")
        same = a.shape == b.shape and bool((a == b).all())
        print(f"ids: tokenizers {a.size}, mechlab {b.size}: {'identical' if same else 'DIFFERENT'}")
        failed |= not same
        warm = None
        for line in proc.stdout.splitlines():
            if line.strip().startswith("mechlab encode, warm cache") and "|" not in line:
                warm = float(line.split()[-1])
        results["styles"][style] = {"tokenizers": {"single": single, "parallel": parallel, "loop": loop},
                                    "mechlab_stdout": proc.stdout, "ids_identical": same,
                                    "mechlab_warm_over_tokenizers_1thread": warm}
    with open(os.path.join(out_dir, "tokenize_vs_tokenizers.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
