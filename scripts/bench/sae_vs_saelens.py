#!/usr/bin/env python3
"""mechlab vs SAELens: TopK SAE training throughput (tokens/s) on one machine, in one run.

Run it through the wrapper (sets up the reference venv, checks the build):

    bash scripts/bench/sae_vs_saelens.sh [--d-in 768] [--d-sae 24576] [--k 32] [--batch 4096]
                                         [--steps 5] [--warmup 1] [--threads N] [--device cpu]

The driver writes --batches batches of seeded Gaussian activations to a raw float32 file
(the cached activations both sides train on), then times, each in its own process so that
each peak memory is its own:
  * SAELens 6.54.12: a TopKTrainingSAE (its default config: b_dec subtracted from the input,
    decoder-norm rescale) stepped as SAETrainer._train_step does: training_forward_pass with
    the dead-latent mask, the firing counts, backward, clip_grad_norm_(1.0), Adam, zero_grad;
  * (unless --skip-torch) a plain dense PyTorch TopK step (encoder, topk, scatter, decoder,
    the MSE, backward, clipping, Adam) without SAELens's extras;
and hands their medians, quartiles, runs and peak memory to `mechlab bench sae
--saelens-json`, which times mechlab's sparse and dense paths on the same file and prints
one table with the ratios against SAELens. The statistics are scripts/bench/bench_stats.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_stats import summarize  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--batches", type=int, default=4, help="distinct batches of activations, cycled")
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--threads", type=int, default=0, help="threads on both sides (0: leave the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="TF32 GEMMs on both sides (CUDA)")
    p.add_argument("--skip-torch", action="store_true", help="leave out the plain PyTorch step")
    p.add_argument("--build", default=os.environ.get("MECHLAB_BUILD", os.path.join(ROOT, "build")))
    p.add_argument("--worker", choices=["saelens", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--activations", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(a) -> dict:
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device(a.device)
    data = torch.from_numpy(np.fromfile(a.activations, dtype="<f4").reshape(-1, a.d_in))
    n_batches = data.shape[0] // a.batch
    data = data[: n_batches * a.batch].reshape(n_batches, a.batch, a.d_in).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    since_fired = torch.zeros(a.d_sae, device=dev)
    state = {"i": 0}

    if a.worker == "saelens":
        import importlib.metadata as md

        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k, dtype="float32",
                                                    device=a.device))
        params = list(sae.parameters())
        opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999))
        act_freq = torch.zeros(a.d_sae, device=dev)
        name = f"SAELens {md.version('sae-lens')} step"
        note = "TopKTrainingSAE, SAETrainer._train_step's work"

        def step():
            x = data[state["i"] % n_batches]
            sae.train()
            out = sae.training_forward_pass(TrainStepInput(
                sae_in=x, dead_neuron_mask=(since_fired > 1000), coefficients={},
                n_training_steps=state["i"], is_logging_step=False))
            with torch.no_grad():
                firing = out.feature_acts.bool().float()
                did_fire = firing.sum(-2).bool()
                since_fired.add_(1)
                since_fired[did_fire] = 0
                act_freq.add_(firing.sum(0))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            state["i"] += 1
    else:
        g = torch.Generator().manual_seed(1)
        W_dec = (torch.randn(a.d_sae, a.d_in, generator=g) / a.d_in ** 0.5).to(dev)
        W_enc = W_dec.t().clone().requires_grad_(True)
        W_dec.requires_grad_(True)
        b_enc = torch.zeros(a.d_sae, device=dev, requires_grad=True)
        b_dec = torch.zeros(a.d_in, device=dev, requires_grad=True)
        params = [W_enc, b_enc, W_dec, b_dec]
        opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999))
        name = "PyTorch dense TopK step"
        note = "plain dense step: encoder, topk, scatter, decoder, MSE"

        def step():
            x = data[state["i"] % n_batches]
            h = (x - b_dec) @ W_enc + b_enc
            v, i = h.topk(a.k, dim=-1, sorted=False)
            acts = torch.zeros_like(h).scatter(-1, i, torch.relu(v))
            loss = ((acts @ W_dec + b_dec - x) ** 2).sum(-1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            state["i"] += 1

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(a.warmup):
        step()
    sync()
    ms = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    row = {"name": name, "note": note + f", {torch.get_num_threads()} threads", "peak_bytes": int(peak)}
    row.update(summarize(ms))
    return row


def main() -> int:
    a = parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    mechlab = os.path.join(a.build, "mechlab")
    with tempfile.TemporaryDirectory(prefix="sae_vs_saelens.") as tmp:
        acts = os.path.join(tmp, "activations.f32")
        rng = np.random.default_rng(0)
        rng.standard_normal((a.batches * a.batch, a.d_in), dtype=np.float32).astype("<f4").tofile(acts)
        common = ["--d-in", str(a.d_in), "--d-sae", str(a.d_sae), "--k", str(a.k), "--batch", str(a.batch),
                  "--steps", str(a.steps), "--warmup", str(a.warmup), "--lr", str(a.lr), "--device", a.device]
        rows = []
        for w in ["saelens"] + ([] if a.skip_torch else ["torch"]):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", w, "--activations", acts,
                   "--threads", str(a.threads)] + common + (["--tf32"] if a.tf32 else [])
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"[sae_vs_saelens] {rows[-1]['name']}: {rows[-1]['ms']:.1f} ms median over {rows[-1]['runs']} "
                  f"steps, peak {rows[-1]['peak_bytes'] / 2**30:.2f} GiB", flush=True)
        baseline = os.path.join(tmp, "saelens.json")
        with open(baseline, "w") as f:
            json.dump({"baseline": rows[0]["name"], "rows": rows}, f)
        cmd = [mechlab, "bench", "sae", "--activations", acts, "--saelens-json", baseline] + common
        if a.threads > 0:
            cmd += ["--threads", str(a.threads)]
        if a.tf32:
            cmd.append("--tf32")
        print("[sae_vs_saelens] " + " ".join(cmd[:3]) + " ...", flush=True)
        return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
