#!/usr/bin/env python3
"""mechlab vs TransformerLens 2.x: forward / run_with_cache time and peak memory, one machine.

Run it through the wrapper (sets up the reference venv, checks the build):

    bash scripts/bench/runtime_vs_transformerlens.sh [--repeats 10] [--warmup 2] [--threads N] [--device cpu]
        [--batch 8] [--pos 128] [--rounds 1]

Model: a GPT-2-small-shaped random HookedTransformer (seed 0, float32), exported once to
build/bench/gpt2_small_random.h5 (mechlab checkpoint) and rebuilt identically from the seed in
each TransformerLens process. Every case runs in its own child process; peak memory is that
child's ru_maxrss (os.wait4), taken the same way for both tools. With --rounds R the whole
interleaved sequence runs R times and each case keeps its fastest round: interference from other
work on a shared machine only ever adds time, so the fastest round is the one closest to the
machine's own speed (the spread is printed). Writes build/bench/runtime_vs_transformerlens.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import re
import resource
import subprocess
import sys
import tempfile

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stats import summarize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "build", "bench")
CKPT = os.path.join(OUT_DIR, "gpt2_small_random.h5")
# MECHLAB_BIN: another build, e.g. build-gpu/mechlab on the GPU machine (scripts/gpu/tl_compare.sh).
MECHLAB = os.environ.get("MECHLAB_BIN") or os.path.join(ROOT, "build", "mechlab")
TL_CFG = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
              n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0)
TOKEN_SEED = 1
# (case, TransformerLens call, mechlab --only case)
CASES = [("forward", "model(tokens)", "bypassed"),
         ("forward", "model(tokens)", "hooks-idle"),
         ("run_with_cache", "model.run_with_cache(tokens)", "run_with_cache")]
# mechlab's floor cases. gemm-floor: the model's weight matmuls alone through at::mm, the same BLAS
# TransformerLens uses. fma-peak (CPU): the same FLOPs at the CPU's measured peak multiply-add rate,
# the physical limit: TL forward / fma-peak is the largest speed-up any float32 implementation of
# this model could have on this machine, whatever its GEMM.
FLOOR_CASE, PEAK_CASE = "gemm-floor", "fma-peak"
TOKENS_NOTE = ("TransformerLens tokens: torch.randint(d_vocab, [batch, pos], Generator seed "
               f"{TOKEN_SEED}); mechlab bench uses its own seeded tokens of the same shape "
               "(speed does not depend on token values)")


def build_model(device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(**TL_CFG, device=device, dtype=torch.float32)
    return HookedTransformer(cfg).eval()


def time_ms(fn, warmup: int, repeats: int, device: str) -> dict:
    """Same statistics as mechlab's bench::time_ms (bench_stats.summarize); the warm-up runs
    the timed call itself, so at the batch size timed."""
    import time
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    return summarize(ms)


def tl_child(args) -> None:
    """One TransformerLens case in this (child) process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    model = build_model(args.device)
    gen = torch.Generator().manual_seed(TOKEN_SEED)
    tokens = torch.randint(TL_CFG["d_vocab"], (args.batch, args.pos), generator=gen).to(args.device)
    fn = {"forward": lambda: model(tokens), "run_with_cache": lambda: model.run_with_cache(tokens)}
    with torch.inference_mode():
        stats = time_ms(fn[args.child], args.warmup, args.repeats, args.device)
    print(json.dumps(dict(stats, threads=torch.get_num_threads(),
                          self_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def export_checkpoint() -> str:
    """Writes CKPT unless it exists for the same config. Reuses the fixture generator's helpers."""
    import h5py
    import numpy as np
    sys.dont_write_bytecode = True  # leave no __pycache__ in scripts/fixtures
    sys.path.insert(0, os.path.join(ROOT, "scripts", "fixtures"))
    import make_runtime_fixtures as fx

    spec = json.dumps(dict(TL_CFG, transformer_lens=md.version("transformer_lens")), sort_keys=True)
    if os.path.exists(CKPT):
        with h5py.File(CKPT, "r") as f:
            if f.attrs.get("bench_spec") == spec:
                return "reused"
    os.makedirs(OUT_DIR, exist_ok=True)
    model = build_model("cpu")
    tmp = CKPT + ".tmp"
    with h5py.File(tmp, "w", libver=fx.LIBVER) as f:
        f.attrs["mechlab_format"] = "checkpoint"
        f.attrs.create("mechlab_version", 1, dtype=np.int64)
        f.attrs["config"] = json.dumps(fx.mechlab_config("gpt2_small_random", model))
        f.attrs["bench_spec"] = spec
        params = f.create_group("params")
        for name, p in model.named_parameters():  # uncompressed: ~650 MB of random floats
            params.create_dataset(fx.param_out_name(name), data=fx.to_np(p))
    os.replace(tmp, CKPT)
    return "written"


def run_child(cmd: list[str], env: dict) -> tuple[str, float]:
    """Runs cmd; returns (output, the child's own peak RSS in MiB from wait4)."""
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if p.returncode != 0:
        sys.exit(f"FAILED (exit {p.returncode}): {' '.join(cmd)}\n{out}")
    return out, usage.ru_maxrss / 1024


def parse_mechlab(out: str, case: str) -> dict:
    # a row: case, median ms, tokens/s, ratio, note (plain columns or "| a | b |" cells)
    row = re.search(rf"^[|\s]*{re.escape(case)}[|\s]+([0-9.]+)[|\s]", out, re.M)
    rss = re.search(r"^peak RSS: ([0-9.]+) (B|KiB|MiB|GiB)\s*$", out, re.M)
    thr = re.search(r"(\d+) CPU threads", out)
    if not row or not rss:
        sys.exit(f"cannot parse mechlab output for case {case}:\n{out}")
    scale = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[rss.group(2)]
    return dict(ms=float(row.group(1)), self_rss_mib=float(rss.group(1)) * scale,
                threads=int(thr.group(1)) if thr else None)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    return f"{names[0]} ({len(names)} logical CPUs)" if names else "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed runs (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, both tools")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8, help="prompts per batch")
    ap.add_argument("--pos", type=int, default=128, help="tokens per prompt (<= n_ctx 1024)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times to run the interleaved sequence; each case keeps its fastest round")
    ap.add_argument("--child", choices=["forward", "run_with_cache"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tl_child(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False here")
    if not os.access(MECHLAB, os.X_OK):
        sys.exit(f"{MECHLAB} not found: build first: bash scripts/test.sh")

    load_start = os.getloadavg()[0]
    print(f"[bench] checkpoint {CKPT}: {export_checkpoint()}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    tl, ml = {}, {}
    spread = {}  # case label -> every round's median ms

    def keep_fastest(results, case, label, entry):
        spread.setdefault(label, []).append(entry["ms"])
        if case not in results or entry["ms"] < results[case]["ms"]:
            results[case] = entry

    def run_tl(tl_case):
        out, rss = run_child([sys.executable, os.path.abspath(__file__), "--child", tl_case,
                              "--threads", str(args.threads), "--device", args.device,
                              "--batch", str(args.batch), "--pos", str(args.pos)] + common, env)
        entry = dict(json.loads(out.strip().splitlines()[-1]), maxrss_mib=rss)
        keep_fastest(tl, tl_case, f"TL {tl_case}", entry)
        print(f"[bench] TransformerLens {tl_case}: {entry['ms']:.1f} ms", flush=True)

    def run_ml(ml_case):
        out, rss = run_child([MECHLAB, "bench", "runtime", "--model", CKPT, "--batch", str(args.batch),
                              "--pos", str(args.pos), "--device", args.device, "--only", ml_case] + common,
                             env)
        entry = dict(parse_mechlab(out, ml_case), maxrss_mib=rss)
        keep_fastest(ml, ml_case, f"mechlab {ml_case}", entry)
        print(f"[bench] mechlab {ml_case}: {entry['ms']:.1f} ms", flush=True)

    # Interleaved, so that a change of load during the run hits both tools alike.
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"[bench] round {r + 1} of {args.rounds}", flush=True)
        run_tl("forward")
        run_ml("bypassed")
        run_ml("hooks-idle")
        run_tl("run_with_cache")
        run_ml("run_with_cache")
        run_ml(FLOOR_CASE)
        if args.device == "cpu":
            run_ml(PEAK_CASE)

    rows = []
    for tl_case, tl_call, ml_case in CASES:
        t, m = tl[tl_case], ml[ml_case]
        rows.append(dict(case=f"{tl_case} / {ml_case}", tl_call=tl_call, tl_ms=t["ms"],
                         mechlab_ms=m["ms"], speedup=t["ms"] / m["ms"], tl_rss_mib=t["maxrss_mib"],
                         mechlab_rss_mib=m["maxrss_mib"],
                         memory_ratio=m["maxrss_mib"] / t["maxrss_mib"]))
    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_model(), device=args.device, threads=args.threads,
        loadavg_1min=dict(start=load_start, end=os.getloadavg()[0]),
        threads_reported=dict(transformer_lens=tl["forward"]["threads"],
                              mechlab=ml["bypassed"]["threads"]),
        torch=torch.__version__, transformer_lens=md.version("transformer_lens"),
        mechlab=subprocess.run([MECHLAB, "--version"], capture_output=True, text=True).stdout.strip(),
        model=dict(TL_CFG, checkpoint=os.path.relpath(CKPT, ROOT)), batch=args.batch, pos=args.pos,
        repeats=args.repeats, warmup=args.warmup, rounds=args.rounds, round_ms=spread,
        tokens=TOKENS_NOTE,
        hooks_idle_over_bypassed=ml["hooks-idle"]["ms"] / ml["bypassed"]["ms"],
        rss_cross_check_mib=dict(
            mechlab_self_reported={k: v["self_rss_mib"] for k, v in ml.items()},
            transformer_lens_self_reported={k: v["self_maxrss_mib"] for k, v in tl.items()}),
        gemm_floor_ms=ml[FLOOR_CASE]["ms"],
        max_speedup_same_blas=tl["forward"]["ms"] / ml[FLOOR_CASE]["ms"],
        fma_peak_ms=ml[PEAK_CASE]["ms"] if PEAK_CASE in ml else None,
        max_speedup_physical=tl["forward"]["ms"] / ml[PEAK_CASE]["ms"] if PEAK_CASE in ml else None,
        rows=rows, raw=dict(transformer_lens=tl, mechlab=ml))

    print(f"\nmechlab vs TransformerLens, GPT-2-small shape (random), {args.batch} x {args.pos} tokens, "
          f"{args.device} float32, {args.threads} threads, median of {args.repeats} "
          f"after {args.warmup} warm-up" + (f", fastest of {args.rounds} rounds" if args.rounds > 1 else ""))
    hdr = ("case (TL / mechlab)", "TL ms", "mechlab ms", "speed-up", "TL RSS MiB", "mechlab RSS MiB", "mem ratio")
    fmt = "{:<32} {:>10} {:>11} {:>9} {:>11} {:>16} {:>10}"
    print(fmt.format(*hdr))
    for r in rows:
        print(fmt.format(r["case"], f"{r['tl_ms']:.1f}", f"{r['mechlab_ms']:.1f}",
                         f"{r['speedup']:.2f}x", f"{r['tl_rss_mib']:.0f}",
                         f"{r['mechlab_rss_mib']:.0f}", f"{r['memory_ratio']:.2f}"))
    print("  speed-up = TL ms / mechlab ms; mem ratio = mechlab / TL peak RSS (child ru_maxrss, "
          "whole process: interpreter/library, weights, activations)")
    print("  TL forward is model(tokens) (idle HookPoints); it is compared with both mechlab "
          "'bypassed' and 'hooks-idle'")
    if args.device == "cuda":
        print("  (--device cuda: RSS is host memory only; GPU memory is not compared)")
    print(f"mechlab hooks-idle / bypassed: {info['hooks_idle_over_bypassed']:.3f}")
    floor = ml[FLOOR_CASE]["ms"]
    print(f"floor through the same BLAS (weight matmuls alone, at::mm): {floor:.1f} ms; TL forward / "
          f"floor = {info['max_speedup_same_blas']:.2f}x; mechlab bypassed / floor = "
          f"{ml['bypassed']['ms'] / floor:.2f}")
    if info["fma_peak_ms"]:
        print(f"physical limit (the same FLOPs at the CPU's measured peak FMA rate): "
              f"{info['fma_peak_ms']:.1f} ms; TL forward / limit = {info['max_speedup_physical']:.2f}x "
              "is the largest speed-up any float32 implementation could have here")
    if args.rounds > 1:
        print("rounds (median ms of each): " + "; ".join(
            f"{k} " + " ".join(f"{v:.0f}" for v in vs) for k, vs in spread.items()))
    print("peak RSS cross-check (self-reported MiB): mechlab "
          + ", ".join(f"{k} {v['self_rss_mib']:.0f}" for k, v in ml.items()) + "; TL "
          + ", ".join(f"{k} {v['self_maxrss_mib']:.0f}" for k, v in tl.items()))
    print(f"threads: {args.threads} asked; reported by TL {info['threads_reported']['transformer_lens']}"
          f", mechlab {info['threads_reported']['mechlab']}")
    print(f"versions: torch {info['torch']}, transformer_lens {info['transformer_lens']}, "
          f"{info['mechlab']}")
    print(f"cpu: {info['cpu']}; 1-min load average {load_start:.2f} at start, "
          f"{info['loadavg_1min']['end']:.2f} at end (other work on the machine skews timings)")
    print(f"date: {info['date']}\nnote: {TOKENS_NOTE}")
    path = os.path.join(OUT_DIR, "runtime_vs_transformerlens.json")
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
