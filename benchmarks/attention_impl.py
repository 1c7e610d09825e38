"""Training-step time of MiniLM with SDPA vs eager attention on CPU (bf16 autocast, attention dropout on): the
measurement behind `ftlab.backbones.attention_for` choosing eager on CPU.

    python benchmarks/attention_impl.py [--lengths 72 128] [--steps 6] [--threads 2]

Both models are timed alternately on the same synthetic batch (batch 32; the second half of the rows carries 10
padding positions, as dynamic padding leaves them); the first step of each is a warm-up. Median seconds per
forward + backward.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ftlab.backbones import load_model

from throughput import compose

IMPLEMENTATIONS = ("sdpa", "eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[72, 128], help="padded sequence lengths")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = compose([]).backbone
    models = {impl: load_model(backbone, attn_implementation=impl, num_labels=2).train() for impl in IMPLEMENTATIONS}
    print(f"MiniLM-L6, batch {args.batch_size}, bf16 autocast, CPU {args.threads} threads, median of "
          f"{args.steps - 1} steps after 1 warm-up")
    for length in args.lengths:
        ids = torch.randint(1000, 2000, (args.batch_size, length))
        mask = torch.ones_like(ids)
        mask[args.batch_size // 2:, length - 10:] = 0
        labels = torch.randint(0, 2, (args.batch_size,))
        seconds: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        for _ in range(args.steps):
            for impl, model in models.items():
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                model.zero_grad(set_to_none=True)
                seconds[impl].append(time.perf_counter() - start)
        median = {impl: statistics.median(s[1:]) for impl, s in seconds.items()}
        print(f"length {length:>4}: sdpa {median['sdpa']:.3f} s, eager {median['eager']:.3f} s "
              f"-> eager / sdpa {median['eager'] / median['sdpa']:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
