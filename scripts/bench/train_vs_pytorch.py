#!/usr/bin/env python3
"""mechlab vs a plain PyTorch + TransformerLens training loop: tokens/s on one machine.

Run it through the wrapper (sets up the reference venv, checks the build):

    bash scripts/bench/train_vs_pytorch.sh [--steps 50] [--warmup 5] [--threads N] [--device cpu]

Both sides train the induction recipe's model (apps/models/induction.json: 2-layer
attention-only, LayerNorm, rotary positions as the recipe says) on batches of the same shape, with the
same step: cross-entropy over every position, backward, clip_grad_norm_(grad_clip),
AdamW(lr, weight_decay, betas, eps) at the recipe's settings. The PyTorch side is a
TransformerLens 2.x HookedTransformer with torch.optim.AdamW (its default for CPU
tensors: the per-parameter loop). mechlab's side is `mechlab bench train`, whose
last line gives its tokens/s. The statistic is the median step time on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MECHLAB = os.environ.get("MECHLAB_BIN", os.path.join(ROOT, "build", "mechlab"))
RECIPE = os.path.join(ROOT, "apps", "models", "induction.json")


def pytorch_tokens_per_s(recipe: dict, steps: int, warmup: int, device: str) -> tuple[float, str]:
    opts = recipe["data"]["options"]
    seq = 1 + 2 * opts["half_len"]
    batch = recipe["batch_size"]
    m = recipe["model"]
    d_head = m["d_model"] // m["n_heads"]
    rotary = m.get("positional") == "rotary"
    cfg = HookedTransformerConfig(n_layers=2, d_model=m["d_model"], n_heads=m["n_heads"],
                                  d_head=d_head, d_vocab=opts["d_vocab"], n_ctx=seq,
                                  attn_only=True, normalization_type="LN",
                                  positional_embedding_type="rotary" if rotary else "standard",
                                  rotary_dim=d_head if rotary else None,
                                  rotary_adjacent_pairs=False, act_fn="relu",
                                  device=device, seed=0)
    model = HookedTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"],
                            weight_decay=recipe["weight_decay"],
                            betas=(recipe.get("beta1", 0.9), recipe.get("beta2", 0.999)),
                            eps=recipe.get("eps", 1e-8))
    gen = torch.Generator().manual_seed(0)
    half = torch.randint(1, opts["d_vocab"], (batch, opts["half_len"]), generator=gen)
    tokens = torch.cat([torch.zeros(batch, 1, dtype=torch.long), half, half], 1).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        loss = model(tokens, return_type="loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return batch * seq / median, f"{batch} x {seq} tokens, {sum(p.numel() for p in model.parameters())} parameters"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(RECIPE) as f:
        recipe = json.load(f)

    cmd = [MECHLAB, "bench", "train", "--config", RECIPE, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out)
    mechlab = float(re.search(r"train_tokens_per_s ([0-9.]+)", out).group(1))
    torch_rate, shape = pytorch_tokens_per_s(recipe, args.steps, args.warmup, args.device)

    print(f"training speed, induction recipe ({shape}, {args.device}, {args.threads} threads, "
          f"median of {args.steps} steps)")
    print(f"| {'implementation':44} | {'tokens/s':>10} |")
    print(f"| {'mechlab Trainer (fused AdamW)':44} | {mechlab:10.0f} |")
    print(f"| {'PyTorch loop on TransformerLens HookedTransformer':44} | {torch_rate:10.0f} |")
    print(f"\nratio mechlab / PyTorch+TransformerLens: {mechlab / torch_rate:.2f} (goal >= 1.5 on the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
