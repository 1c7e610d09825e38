"""Winner-take-all column-row sampling: which rows of a weight-gradient product to keep, and how to re-weight them.

The weight gradient of a linear layer is a sum over its N input rows, ∇W = Σ_i ∇Z_iᵀ X_i ("column-row pairs").
WTA-CRS (its paper's App. C) keeps a deterministic set C of the most probable pairs unscaled and estimates the rest from
m = k − |C| draws *with replacement* from p restricted to D∖C:

    ĝ = Σ_{c∈C} F_c + (1/m) Σ_t F_{j_t} / q_{j_t},      q_j = p_j / (1 − Σ_C p),   F_i = ∇Z_iᵀ X_i

which is unbiased for any C and any p that is positive wherever F_i ≠ 0 (Theorem 1), and has lower variance than
plain CRS (|C| = 0) when Σ_C p > |C|/k (Theorem 2). |C| minimises (1 − Σ_{j≤c} p_(j)) / (k − c) over c = 0..k−1
(c = 0 gives 1/k, so |C| = 0 unless some c beats it).

Deliberate departures from the official code (`WTA@e114d351:seq2seq/approxlinear/functional.py`):
* the code's first-epoch branch (cached norms all zero) multiplies the sampled rows by (1 − Σ_C p) but not by 1/(m p_j),
  and its `mix_replacement` branch (|C| = 0) samples without replacement and does not rescale: both are biased. Here
  every case uses with-replacement draws and the 1/(m q_j) weight, so the estimator is unbiased in all cases;
* the 0/0 score when the top-k pairs hold all the mass is avoided: if at most k rows have non-zero probability they
  all go into C, m = 0, and the "estimate" is the exact product;
* repeated draws of the same row are merged into one saved row whose weight is the sum of the draws' weights (the same
  estimator, fewer saved rows).

Nothing here is in a library (torch has no importance-sampled matmul), hence written by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def budget_rows(budget: float, n_rows: int, min_k: int = 10) -> int:
    """k = clamp(int(budget · N), min_k, N): the number of column-row pairs kept out of N."""
    return max(min(int(budget * n_rows), n_rows), min(min_k, n_rows))


def row_norms(rows: torch.Tensor) -> torch.Tensor:
    """‖row‖₂ over the last axis, accumulated in at least float32 (bf16 inputs would lose the small norms)."""
    return torch.linalg.vector_norm(rows, dim=-1, dtype=torch.promote_types(rows.dtype, torch.float32))


def row_probabilities(
    x_norms: torch.Tensor, grad_norms: torch.Tensor | None = None, known: torch.Tensor | None = None, floor: float = 0.01
) -> torch.Tensor:
    """p_i ∝ ‖X_i‖·‖∇Z_i‖ (the variance-optimal CRS distribution, WTA-CRS App. C.1), from possibly stale gradient norms;
    over the last axis, so (..., n) norms give one distribution per group (the attention maps' (example, head)).

    `grad_norms` are cached ‖∇Z_i‖ from the last visit of each row (None: no cache, p ∝ ‖X_i‖). Rows with
    `known == False` (never seen) get the mean cached norm of the known rows. `floor` mixes in p ∝ ‖X_i‖ with this
    weight, so every row with X_i ≠ 0 keeps p_i > 0: a stale cache that says ‖∇Z_i‖ = 0 while the current gradient is
    not zero then costs variance, never bias. A group whose rows are all zero gets the uniform distribution (any
    distribution gives the exact, zero, product).
    """
    a = x_norms.float()
    a_total = a.sum(-1, keepdim=True)
    by_x = torch.where(a_total > 0, a / a_total.clamp_min(torch.finfo(torch.float32).tiny), 1.0 / a.shape[-1])
    if grad_norms is None:
        return by_x
    g = grad_norms.float()
    if known is not None:
        if not bool(known.any()):
            return by_x
        g = torch.where(known, g, g[known].mean())
    s = a * g
    s_total = s.sum(-1, keepdim=True)
    usable = (s_total > 0) & torch.isfinite(s_total)
    mixed = (1.0 - floor) * (s / s_total.clamp_min(torch.finfo(torch.float32).tiny)) + floor * by_x
    return torch.where(usable, mixed, by_x)


def deterministic_counts(p: torch.Tensor, k: int) -> torch.Tensor:
    """|C| by Theorem 2 for each group (last axis) of `p`: argmin over c = 0..k−1 of (1 − Σ_{j≤c} p_(j)) / (k − c);
    0 unless some c beats 1/k (the first minimum wins ties)."""
    p = p.double()
    top = torch.topk(p, k, dim=-1).values
    taken = torch.cat([torch.zeros_like(top[..., :1]), torch.cumsum(top, -1)[..., :-1]], -1)  # mass of the top c, c = 0..k−1
    total = p.sum(-1, keepdim=True)
    remaining = (total - taken).clamp_min(0.0) / total
    return torch.argmin(remaining / torch.arange(k, 0, -1, dtype=torch.float64, device=p.device), dim=-1)


def deterministic_count(p: torch.Tensor, k: int) -> int:
    """|C| of one group; call only when more than k rows have p > 0 (otherwise C is every such row and nothing is
    sampled), so the remaining mass after any c < k is positive and the scores are finite."""
    return int(deterministic_counts(p, k))


@dataclass
class RowPlan:
    """Rows of X to keep for the weight gradient and the weight of each: ĝ = Σ_r weight_r · ∇Z_{rows_r}ᵀ X_{rows_r}."""

    rows: torch.Tensor      # (r,) int64, C first, then the distinct sampled rows
    weights: torch.Tensor   # (r,) float32; 1 for C
    deterministic: int      # |C|
    draws: int              # m = k − |C| (with replacement; r − |C| ≤ m distinct rows)


def plan_rows(p: torch.Tensor, k: int, winner_take_all: bool = True, generator: torch.Generator | None = None) -> RowPlan:
    """Choose C (top |C| by p, Theorem 2) and m = k − |C| draws from p on D∖C; `winner_take_all=False` is plain CRS."""
    support = torch.nonzero(p > 0).flatten()
    if support.numel() <= k:  # every pair with mass fits in the budget: keep them all, exactly
        return RowPlan(support, torch.ones(support.numel(), dtype=torch.float32, device=p.device), support.numel(), 0)
    c = deterministic_count(p, k) if winner_take_all else 0
    chosen = torch.topk(p, c).indices if c else p.new_zeros(0, dtype=torch.long)
    rest = p.double().clone()
    rest[chosen] = 0.0
    remaining = rest.sum()
    m = k - c
    draws = torch.multinomial(rest / remaining, m, replacement=True, generator=generator)
    sampled, counts = torch.unique(draws, return_counts=True)
    weights = counts.double() * remaining / (m * p.double()[sampled])  # = count / (m · q_j)
    rows = torch.cat([chosen, sampled])
    all_weights = torch.cat([torch.ones(c, dtype=torch.float64, device=p.device), weights]).float()
    return RowPlan(rows, all_weights, c, m)
