"""Mixout-style mixing of a weight with a target, with the official code's gradient convention.

    W̃ = ((1 − M) ⊙ T + M ⊙ W − p·T) / (1 − p)   i.e.   W̃ = (W − p·T)/(1 − p) where M = 1,  W̃ = T where M = 0

With M ~ Bernoulli(1 − p) this keeps the expectation: E[W̃] = W (`MIX@18f377d2:mixout/mixout.py`). Used by Mixout
(T = the pretrained weight, M one draw per input column) and by DPS Mix (the same in its accumulation phase; in its
exploitation phase T = a snapshot and M the selected entries).

Gradient convention: the official backward returns ∂L/∂W̃ ⊙ M as the gradient of W, *without* the 1/(1 − p) factor that
autograd would give for the formula above. A plain autograd expression cannot produce that, hence the custom
autograd Function (written by hand: no library offers this mixing op).

The mask M is boolean and broadcasts against W: a `(in_features,)` vector is a per-input-column (neuron-wise) mask
with no full-size mask allocated; a `(out, in)` tensor masks entries.
"""
from __future__ import annotations

import torch
from torch import nn


class _MixWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(keep)
        kept = torch.add(weight, target, alpha=-p).div_(1.0 - p)   # (W − pT)/(1 − p)
        return torch.where(keep, kept, target)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0), None, None, None


def mix_weight(weight: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """W̃ for a boolean mask `keep` (True = keep the current weight); gradient to W is ∂L/∂W̃ ⊙ keep (no 1/(1−p))."""
    return _MixWeight.apply(weight, target, keep, p)


def linear_sharing(cls: type[nn.Linear], linear: nn.Linear) -> nn.Linear:
    """An instance of the nn.Linear subclass `cls` holding the *same* weight and bias Parameters as `linear`.

    No new parameters are allocated and no re-initialisation runs, so the optimizer and any tying see one tensor.
    """
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.in_features, new.out_features = linear.in_features, linear.out_features
    new.weight = linear.weight
    new.bias = linear.bias
    new.train(linear.training)
    return new
