"""Seconds per AdamW step over all MiniLM parameters on CPU: the per-tensor loop, foreach, and fused implementations
(why `TaskModule.configure_optimizers` uses fused, as the HF Trainer does by default).

    python benchmarks/optimizer_step.py [--steps 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from ftlab.backbones import load_model

from throughput import compose

VARIANTS = {"per-tensor loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = list(load_model(compose([]).backbone, num_labels=2).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"AdamW over MiniLM's {sum(p.numel() for p in params) / 1e6:.1f}M parameters ({len(params)} tensors), "
          f"CPU {args.threads} threads, mean of {args.steps} steps after 3 warm-up")
    for name, kwargs in VARIANTS.items():
        optimizer = torch.optim.AdamW(params, lr=1e-5, **kwargs)
        for _ in range(3):
            optimizer.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        print(f"{name:<16} {1000 * (time.perf_counter() - start) / args.steps:8.1f} ms/step")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
