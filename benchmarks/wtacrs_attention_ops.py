"""CPU time of one attention product, forward + backward, exact vs WTA-CRS sampled (the paper's level 2 matmuls).

    python benchmarks/wtacrs_attention_ops.py                       # MiniLM's shapes: batch 32, 12 heads, 128 x 32
    python benchmarks/wtacrs_attention_ops.py --batch 10 --heads 12 --length 128 --head-dim 64 --repeats 10

QKᵀ: exact `q @ kᵀ` against `_SampledQK` (∇Q from k key rows, ∇K from k query rows); P·V: exact `p @ v` against
`_SampledPV` (∇V from k query rows), at budget 0.3, bf16 operands as under autocast, one thread, no norm cache (the
sampling work is the same with one). Prints the median CPU milliseconds of `--repeats` calls after one warm-up call,
and the overhead per step of a model with `--layers` attention blocks. The whole-model step time is in
benchmarks/wtacrs_memory.py.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from ftlab.methods.wtacrs.attention import HeadRowSampler, _SampledPV, _SampledQK


def cpu_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--layers", type=int, default=6, help="attention blocks per model, for the per-step figure")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b, h, n, d = args.batch, args.heads, args.length, args.head_dim
    bf16 = torch.bfloat16
    q, k, v = (torch.randn(b, h, n, d, dtype=bf16, requires_grad=True) for _ in range(3))
    probs = torch.softmax(torch.randn(b, h, n, n), -1).requires_grad_()
    grad_scores, grad_out = torch.randn(b, h, n, n, dtype=bf16), torch.randn(b, h, n, d, dtype=bf16)

    def sampler(tag: str) -> HeadRowSampler:
        return HeadRowSampler(args.budget, 10, 0.01, None, "bench", tag)

    cases = {
        "QKᵀ": (lambda: (q @ k.transpose(-1, -2)).backward(grad_scores),
                lambda: _SampledQK.apply(q, k, sampler("qk.q"), sampler("qk.k"), bf16).backward(grad_scores)),
        "P·V": (lambda: (probs.to(bf16) @ v).backward(grad_out),
                lambda: _SampledPV.apply(probs, v, sampler("pv"), 0.0, bf16).backward(grad_out)),
    }
    print(f"batch {b}, {h} heads, length {n}, head dim {d}, budget {args.budget}, bf16, 1 thread; "
          f"median CPU ms of forward + backward over {args.repeats} calls")
    print("| product | exact ms | sampled ms | ratio | extra per step, x" f"{args.layers} layers |")
    print("|---|---|---|---|---|")
    for name, (exact, sampled) in cases.items():
        e, s = cpu_ms(exact, args.repeats), cpu_ms(sampled, args.repeats)
        print(f"| {name} | {e:.1f} | {s:.1f} | {s / e:.2f}x | {args.layers * (s - e):+.0f} ms |")


if __name__ == "__main__":
    main()
