"""Dropout whose random mask costs a tenth of torch's on CPU.

Why by hand: on CPU, `torch.nn.functional.dropout` draws its mask with `bernoulli_` from the single-threaded
MT19937 generator at ~9 ns an element, which is 20 % of a MiniLM bf16 training step (20 dropouts a step; profiled
with torch.profiler, benchmarks/throughput.py measures the step). No library offers a faster CPU dropout. Here the
mask comes from NumPy's SFC64 `random_raw` (64 random bits at a time, read as four 16-bit draws): an element is kept
when its draw clears round(p * 65536) of 65536 levels, so the drop rate is p to within 2^-17 and the scale 1 / (the
exact keep rate) keeps the output unbiased. Each call seeds SFC64 with one draw from torch's default generator, so
`seed_everything` fixes the masks and a resumed run (which restores torch's RNG state) draws the same ones.

Forward and backward are one `native_dropout_backward` kernel each (x * mask * scale); the saved mask is one byte an
element (torch's CPU dropout saves its noise in the input's dtype: four bytes for float32 attention probabilities). Off the CPU, torch's dropout runs (its GPU generator is fast).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """(bool mask with each element kept with probability 1 - p, its exact keep rate); off the CPU, torch's generator."""
    if torch.device(device).type != "cpu":
        return torch.rand(shape, device=device) >= p, 1.0 - p
    n = int(np.prod(shape)) if len(shape) else 1
    dropped_levels = round(p * LEVELS)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    draws = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]
    keep = torch.from_numpy(draws).view(shape) >= (dropped_levels - LEVELS // 2)
    return keep, (LEVELS - dropped_levels) / LEVELS


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the fast CPU mask."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep, rate = keep_mask(x.shape, p)
    return _MaskedScale.apply(x, keep, 1.0 / rate)


class FastDropout(nn.Dropout):
    """nn.Dropout (same `p`, same state) through `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> int:
    """Turn every plain nn.Dropout in `model` into a FastDropout in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout and not module.inplace:
            module.__class__ = FastDropout
            count += 1
    return count
