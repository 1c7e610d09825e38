"""The WTA-CRS linear layer (WTA-CRS App. D, Alg. 1): exact forward, exact input and bias gradients, sampled weight gradient.

Only the k kept rows of the input X (and their row ids and weights) are saved for backward, instead of all N = batch ·
sequence rows: that is the activation memory WTA-CRS saves. The weight itself is saved as the parameter (no copy), and
re-cast to the compute dtype in backward, so the layer also keeps no autocast copy of its weight alive between forward
and backward.

A custom `torch.autograd.Function` because what is *saved* must change (a subset of rows), which no hook on a stock
`nn.Linear` can do; the sampling maths is in `sampling`, the ‖∇Z‖ cache in `cache`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from .cache import NormCache
from .sampling import RowPlan, budget_rows, plan_rows, row_norms, row_probabilities


def check_budget(budget: float) -> float:
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0.0 < float(budget) <= 1.0:
        raise ConfigError(
            f"WTA-CRS budget={budget!r} is not a fraction in (0, 1]: it is the share of the batch's token rows kept for "
            f"the weight gradient; use e.g. method.budget=0.3 (the paper's default) or 0.1"
        )
    return float(budget)


class RowSampler:
    """Per-layer sampling settings and bookkeeping: the budget, the cache key, and counts for the report."""

    def __init__(self, budget: float, min_k: int = 10, floor: float = 0.01, cache: NormCache | None = None,
                 cache_key: str | None = None):
        if not 0.0 <= floor < 1.0:
            raise ConfigError(f"WTA-CRS floor={floor} must be in [0, 1): it mixes p ∝ ‖X‖ into the sampling distribution")
        if min_k < 1:
            raise ConfigError(f"WTA-CRS min_k={min_k} must be >= 1 (the paper's minimal_k is 10)")
        self.budget, self.min_k, self.floor = check_budget(budget), int(min_k), float(floor)
        self.cache, self.cache_key = cache, cache_key
        if cache is not None:
            if cache_key is None:
                raise ConfigError("WTA-CRS: a layer with a cache needs a cache_key (its module name)")
            cache.register(cache_key)
        self.stats = {"forwards": 0, "rows": 0, "kept": 0, "deterministic": 0, "draws": 0}
        self.first_input_bytes: int | None = None  # what an exact layer would save on the first forward (its input)

    def plan(self, x2: torch.Tensor, leading: tuple[int, ...]) -> tuple[RowPlan | None, torch.Tensor | None]:
        """The rows to keep for this forward (None: keep all, exact) and the rows' cache slots (None: uncached)."""
        n = x2.shape[0]
        if self.first_input_bytes is None:
            self.first_input_bytes = x2.numel() * x2.element_size()
        slots = self.cache.slots(leading) if self.cache is not None else None
        k = budget_rows(self.budget, n, self.min_k)
        self.stats["forwards"] += 1
        self.stats["rows"] += n
        if k >= n:
            self.stats["kept"] += n
            return None, slots
        cached, known = self.cache.lookup(self.cache_key, slots) if slots is not None else (None, None)
        p = row_probabilities(row_norms(x2), cached, known, self.floor)
        plan = plan_rows(p, k)
        self.stats["kept"] += plan.rows.numel()
        self.stats["deterministic"] += plan.deterministic
        self.stats["draws"] += plan.draws
        return plan, slots

    def record(self, slots: torch.Tensor, grad_z: torch.Tensor) -> None:
        """Backward: store the rows' ‖∇Z_i‖ for the next visit of these examples."""
        self.cache.write(self.cache_key, slots, row_norms(grad_z))


class _SampledWeightGradLinear(torch.autograd.Function):
    """Z = X Wᵀ + b; backward: ∇X = ∇Z W and ∇b = Σ ∇Z exact, ∇W from the kept rows only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sampler: RowSampler,
                dropout: float = 0.0) -> torch.Tensor:
        dtype = x.dtype
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        keep = None
        if dropout > 0.0:  # dropout on the input, fused: backward needs only a bool mask (CPU dropout saves fp32 noise)
            keep = torch.rand(x.shape, device=x.device) >= dropout
            x = x * keep.to(dtype) / (1.0 - dropout)
        z = F.linear(x, weight.to(dtype), None if bias is None else bias.to(dtype))
        ctx.x_shape, ctx.sampler, ctx.dropout = x.shape, sampler, dropout
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if need_b else None
        kept = rows = weights = slots = None
        if need_w:
            x2 = x.reshape(-1, x.shape[-1])
            plan, slots = sampler.plan(x2, tuple(x.shape[:-1]))
            if plan is None:
                kept = x2
            else:
                kept, rows, weights = x2.index_select(0, plan.rows), plan.rows, plan.weights
        ctx.save_for_backward(weight if need_x else None, kept, rows, weights, slots, keep if need_x else None)
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, kept, rows, weights, slots, keep = ctx.saved_tensors
        g2 = grad_z.reshape(-1, grad_z.shape[-1])
        grad_x = grad_w = grad_b = None
        if weight is not None:
            grad_x = (g2 @ weight.to(g2.dtype)).view(ctx.x_shape)
            if keep is not None:
                grad_x = grad_x * keep.to(grad_x.dtype) / (1.0 - ctx.dropout)
        if kept is not None:
            if rows is None:
                grad_w = g2.t() @ kept.to(g2.dtype)
            else:
                wide = torch.promote_types(g2.dtype, torch.float32)  # weight the rows before rounding to bf16
                picked = (g2.index_select(0, rows).to(wide) * weights.to(wide)[:, None]).to(kept.dtype)
                grad_w = picked.t() @ kept
            grad_w = grad_w.to(ctx.weight_dtype)
            if slots is not None:
                ctx.sampler.record(slots, g2)
        if ctx.bias_dtype is not None:
            grad_b = g2.float().sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


def sampled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sampler: RowSampler,
                   dropout: float = 0.0) -> torch.Tensor:
    """F.linear(dropout(x)) with a WTA-CRS weight gradient; computes in the autocast dtype like F.linear.

    `dropout` (training only: the caller decides) is applied to x inside the function, so the rows sampled are rows of
    the dropped-out input and backward keeps a bool mask instead of a float copy of the noise.
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout} must be in [0, 1)")
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with torch.autocast(device, enabled=False):  # cast by hand: autocast would keep a copy of the weight alive
        return _SampledWeightGradLinear.apply(x.to(dtype), weight, bias, sampler, dropout)


class WTACRSLinear(nn.Module):
    """A drop-in for `nn.Linear` (same `weight`/`bias` parameters and state-dict keys) whose weight gradient is WTA-CRS.

    Exact in eval mode, under `torch.no_grad`, and when the weight is frozen (then no rows are needed at all).
    `sampler.cache` (shared by all layers of a model) supplies cached ‖∇Z_i‖ per row; without one, p ∝ ‖X_i‖.
    """

    def __init__(self, linear: nn.Linear, sampler: RowSampler):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"WTA-CRS replaces nn.Linear layers; got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.sampler = sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return F.linear(x, self.weight, self.bias)
        return sampled_linear(x, self.weight, self.bias, self.sampler)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"budget={self.sampler.budget}")
