"""The attention products of WTA-CRS level 2 (docs/methods/wtacrs.md#attention-products; "attout_sampling", "score_sampling"): exact
outputs, and the gradients of the operands that are *saved* for backward estimated from k sampled rows of each
(example, head), so only those k rows are kept.

    O = P̃ V,  P̃ = dropout(softmax(S)):   ∇P̃ = ∇O Vᵀ (exact),   ∇V = Σ_i P̃_iᵀ ∇O_i  (sum over the n query rows)

∇V is a column-row product like a linear layer's weight gradient, one per (example, head), so the same winner-take-all
estimator applies with p_i ∝ ‖P̃_i‖·‖∇O_i‖ (‖∇O_i‖ cached per example, head and token position from the last visit).
Only the k kept rows of P̃ are saved (the stock attention saves all of P̃, the matmul's operand): the largest
activation of a small-hidden model like MiniLM. The softmax output stays exact and saved (softmax's own backward
needs it). The dropout is applied inside the function and keeps a bool mask (ftlab.kernels.dropout's, as the stock
attention's does on a CPU run; torch's own CPU dropout saves a float noise tensor):
the rows sampled must be rows of the dropped-out P̃, and the mask is what backward needs to route ∇P̃ to ∇P.

An observation the measurements bring out (benchmarks/wtacrs_memory.py): P̃ = P ∘ mask / (1 − p) could be rebuilt in
backward from the softmax output P, which softmax's backward keeps anyway, and the bool mask — then the exact product
would save no more than the sampled one. The paper's scheme saves the sampled rows of P̃, and that is what this
implements; the exact variant is not WTA-CRS and is not offered here.

The scores S = Q Kᵀ (`_SampledQK`, "score_sampling") are two more column-row products per (example, head):

    ∇Q = Σ_j ∇S_{:,j} K_j  (over the m key rows),     ∇K = Σ_i ∇S_{i,:}ᵀ Q_i  (over the n query rows)

so ∇Q is estimated from k sampled rows of K (p_j ∝ ‖K_j‖·‖∇S_{:,j}‖, cached per key position) and ∇K from k sampled
rows of Q (p_i ∝ ‖Q_i‖·‖∇S_{i,:}‖, cached per query position): k rows of Q and of K are saved instead of all of both.
Unlike V's gradient, ∇Q and ∇K flow on into the layers below (through the Q and K projections), so this adds
variance to every gradient under it; it is the paper's level 2, and `method.sample_scores=false` keeps QKᵀ exact.

Fixed k per (example, head) so every tensor stays rectangular: slot j < |C_g| holds the j-th most probable row
(weight 1), the other k − |C_g| slots hold draws with replacement from the rest (weight (1 − Σ_C p)/((k − |C_g|) p)),
duplicates not merged.

Plugged in through Hugging Face's attention interface (`ATTENTION_NAME`), which BERT, RoBERTa, DistilBERT and T5 call
with their attention module; a module without a sampler, in eval mode or under no_grad runs plain eager attention.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.dropout import dropout as fast_dropout, keep_mask
from .cache import NormCache
from .sampling import budget_rows, deterministic_counts, row_norms, row_probabilities

ATTENTION_NAME = "ftlab_wtacrs"
SAMPLER_ATTRIBUTE = "wtacrs_pv_sampler"               # a HeadRowSampler: P·V sampled
SCORE_SAMPLERS_ATTRIBUTE = "wtacrs_qk_samplers"      # (query, key) HeadRowSamplers: QKᵀ sampled


def plan_groups(p: torch.Tensor, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winner-take-all plans for G groups at once: (rows (G, k), weights (G, k), |C| per group (G,)).

    |C_g| by Theorem 2 (argmin over c < k of (1 − Σ top-c p)/(k − c)); a group with at most k rows of non-zero p keeps
    its k most probable rows exactly (|C_g| = k, every row with mass among them).
    """
    p = p.double()
    p = p / p.sum(-1, keepdim=True)
    top_p, top_rows = torch.topk(p, k, dim=-1)
    c = deterministic_counts(p, k)
    exact = (p > 0).sum(-1) <= k
    c = torch.where(exact, torch.full_like(c, k), c)
    slot = torch.arange(k, device=p.device)
    in_c = slot[None, :] < c[:, None]
    rest = p.clone()
    rest.scatter_(1, top_rows, torch.where(in_c, 0.0, top_p))                # zero the chosen rows
    rest_mass = rest.sum(-1, keepdim=True)
    safe_rest = torch.where(rest_mass > 0, rest / rest_mass.clamp_min(1e-300), torch.ones_like(rest) / rest.shape[1])
    draws = torch.multinomial(safe_rest, k, replacement=True, generator=generator)
    m = (k - c).clamp_min(1).to(torch.float64)[:, None]
    draw_weights = rest_mass / (m * p.gather(1, draws).clamp_min(1e-300))  # = 1 / (m · q_j)
    rows = torch.where(in_c, top_rows, draws)
    weights = torch.where(in_c, torch.ones_like(draw_weights), draw_weights).float()
    return rows, weights, c


class HeadRowSampler:
    """One sampled operand of one attention module: its settings, its cache keys (made on the first forward) and
    counts. `tag` names the operand: "pv" (P̃'s query rows), "qk.q" (Q's rows), "qk.k" (K's rows).

    The cached gradient norms are per head (one table per head, as the official code), or with `pooled` one table for
    all heads holding the norm over the heads' concatenated gradient row (1/heads of the cache; every head then samples
    with its own ‖operand row‖ times that shared factor — still unbiased, a little more variance).
    """

    def __init__(self, budget: float, min_k: int, floor: float, cache: NormCache | None, name: str, tag: str = "pv",
                 pooled: bool = False):
        self.budget, self.min_k, self.floor, self.cache, self.name, self.tag = budget, min_k, floor, cache, name, tag
        self.pooled = bool(pooled)
        self.keys: list[str] = []
        self.stats = {"forwards": 0, "rows": 0, "kept": 0, "deterministic": 0}

    def slots(self, batch: int, heads: int, positions: int) -> torch.Tensor | None:
        if self.cache is None:
            return None
        if not self.keys:
            self.keys = [f"{self.name}.{self.tag}"] if self.pooled else [f"{self.name}.{self.tag}.h{h}" for h in range(heads)]
            for key in self.keys:
                self.cache.register(key)
        return self.cache.slots((batch, positions))

    def lookup(self, slots: torch.Tensor, batch: int, heads: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached gradient norms and known flags as (batch · heads, positions), the group order of the operands."""
        norms, known = zip(*(self.cache.lookup(key, slots) for key in self.keys))

        def as_groups(per_key: tuple[torch.Tensor, ...]) -> torch.Tensor:  # keys x (B·n,) -> (B·H, n)
            stacked = torch.stack(per_key, 1).view(batch, positions, len(per_key)).expand(-1, -1, heads)
            return stacked.transpose(1, 2).reshape(batch * heads, positions)

        return as_groups(norms), as_groups(known)

    def record(self, slots: torch.Tensor, grad_norms: torch.Tensor) -> None:
        """grad_norms: (batch, heads, positions) norms of this backward's gradient rows paired with the operand's rows."""
        if self.pooled:
            grad_norms = torch.linalg.vector_norm(grad_norms, dim=1, keepdim=True)  # ‖all heads' row‖
        for h, key in enumerate(self.keys):
            self.cache.write(key, slots, grad_norms[:, h].reshape(-1))

    def keep_rows(self, operand: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(kept rows (B·H, k, d), rows, weights, cache slots) of an operand (B, H, n, d); rows/weights are None when
        the budget covers all n rows (kept = every row, exact)."""
        b, h, n, d = operand.shape
        groups = operand.reshape(b * h, n, d)
        k = budget_rows(self.budget, n, self.min_k)
        self.stats["forwards"] += 1
        self.stats["rows"] += b * h * n
        slots = self.slots(b, h, n)
        if k >= n:
            self.stats["kept"] += b * h * n
            return groups, None, None, slots
        cached = known = None
        if slots is not None:
            cached, known = self.lookup(slots, b, h, n)
        p = row_probabilities(row_norms(groups), cached, known, self.floor)
        rows, weights, c = plan_groups(p, k)
        self.stats["kept"] += b * h * k
        self.stats["deterministic"] += int(c.clamp_max(k).sum())
        return take_rows(groups, rows), rows, weights, slots


def flat_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Per-group row ids (G, k) as ids into the (G · n) rows of the groups stacked."""
    return (rows + torch.arange(rows.shape[0], device=rows.device)[:, None] * n).reshape(-1)


def take_rows(groups: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """groups (G, n, d) at per-group row ids (G, k) -> (G, k, d); one index_select over the stacked rows (several
    times faster on CPU than gather with an expanded index)."""
    g, n, d = groups.shape
    return groups.reshape(g * n, d).index_select(0, flat_rows(rows, n)).view(g, -1, d)


def sampled_product(kept: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor | None,
                    weights: torch.Tensor | None) -> torch.Tensor:
    """Σ_i keptᵢᵀ gradᵢ over the contracted rows, per group: keptᵀ @ grad (G, d, e) from the k kept rows of the operand
    (G, k, d) and the matching, re-weighted rows of the gradient (G, n, e); rows None = all rows, exact."""
    if rows is not None:
        wide = torch.promote_types(grad.dtype, torch.float32)  # weight the rows before rounding to bf16
        picked = take_rows(grad, rows)
        grad = (picked.to(wide) * weights[..., None]).to(kept.dtype)
    return kept.transpose(1, 2) @ grad.to(kept.dtype)


class _SampledPV(torch.autograd.Function):
    """O = dropout(P) V with ∇V from k sampled query rows per (example, head); P and V: (B, H, n, m), (B, H, m, d)."""

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, value: torch.Tensor, sampler: HeadRowSampler, dropout: float,
                dtype: torch.dtype) -> torch.Tensor:
        keep = None
        dropped = probs
        if dropout > 0.0:
            keep, rate = keep_mask(probs.shape, dropout, probs.device)
            dropped = probs * keep.to(probs.dtype) / rate
        dropped = dropped.to(dtype)
        out = dropped @ value.to(dtype)  # V is saved as it came (bf16 under autocast) and re-cast in backward
        ctx.keep_rate, ctx.sampler, ctx.shape = rate if keep is not None else 1.0, sampler, probs.shape
        ctx.probs_dtype, ctx.value_dtype = probs.dtype, value.dtype
        kept = rows = weights = slots = None
        if ctx.needs_input_grad[1]:
            kept, rows, weights, slots = sampler.keep_rows(dropped)
        ctx.save_for_backward(value if ctx.needs_input_grad[0] else None, keep, kept, rows, weights, slots)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        value, keep, kept, rows, weights, slots = ctx.saved_tensors
        b, h, n, m = ctx.shape
        grad_probs = grad_value = None
        if value is not None:
            grad_probs = grad_out @ value.to(grad_out.dtype).transpose(-1, -2)
            if keep is not None:
                grad_probs = grad_probs * keep.to(grad_probs.dtype) / ctx.keep_rate
            grad_probs = grad_probs.to(ctx.probs_dtype)
        if kept is not None:
            grad_value = sampled_product(kept, grad_out.reshape(b * h, n, -1), rows, weights)
            grad_value = grad_value.view(b, h, m, -1).to(ctx.value_dtype)
            if slots is not None:
                ctx.sampler.record(slots, row_norms(grad_out))  # ‖∇O_i‖, (B, H, n)
        return grad_probs, grad_value, None, None, None


def weighted_rows(kept: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The kept rows times their estimator weights, multiplied in at least float32 and rounded once to the rows' dtype
    (what the official code saves: X̃_J = X_J · (1 − Σ_C p)/(m p_J))."""
    if weights is None:
        return kept
    wide = torch.promote_types(kept.dtype, torch.float32)
    return (kept.to(wide) * weights[..., None]).to(kept.dtype)


def scatter_rows(kept: torch.Tensor, rows: torch.Tensor | None, n: int) -> torch.Tensor:
    """(G, n, d) zeros with the kept (already weighted) rows added at their row ids, repeated draws summed: the sampled
    operand as a dense matrix, so backward is one matmul of the exact shape instead of gathers of the gradient."""
    if rows is None:
        return kept
    g, k, d = kept.shape
    wide = torch.promote_types(kept.dtype, torch.float32)
    dense = torch.zeros(g * n, d, dtype=wide, device=kept.device)
    dense.index_add_(0, flat_rows(rows, n), kept.reshape(-1, d).to(wide))
    return dense.view(g, n, d).to(kept.dtype)


class _SampledQK(torch.autograd.Function):
    """S = Q Kᵀ with ∇Q from k sampled key rows and ∇K from k sampled query rows per (example, head);
    Q and K: (B, H, n, d), (B, H, m, d). Only the kept rows of K (for ∇Q) and of Q (for ∇K) are saved, already
    multiplied by their estimator weights; backward scatters them back to a sparse dense operand (∇Q = ∇S K̃,
    ∇K = ∇Sᵀ Q̃), which costs one exact-shape matmul each and no gather of the n × m gradient."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, query_sampler: HeadRowSampler,
                key_sampler: HeadRowSampler, dtype: torch.dtype) -> torch.Tensor:
        q, k = query.to(dtype), key.to(dtype)
        scores = q @ k.transpose(-1, -2)
        ctx.q_sampler, ctx.k_sampler = query_sampler, key_sampler
        ctx.shapes, ctx.dtypes = (query.shape, key.shape), (query.dtype, key.dtype)
        saved: list[torch.Tensor | None] = []
        for needed, sampler, operand in ((ctx.needs_input_grad[0], key_sampler, k),      # K's rows give ∇Q
                                         (ctx.needs_input_grad[1], query_sampler, q)):   # Q's rows give ∇K
            if needed:
                kept, rows, weights, slots = sampler.keep_rows(operand)
                saved += [weighted_rows(kept, weights), rows, slots]
            else:
                saved += [None, None, None]
        ctx.save_for_backward(*saved)
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        k_kept, k_rows, k_slots, q_kept, q_rows, q_slots = ctx.saved_tensors
        (b, h, n, d), (_, _, m, _) = ctx.shapes
        g = grad_scores.reshape(b * h, n, m)
        grad_query = grad_key = None
        norm_dtype = torch.promote_types(g.dtype, torch.float32)
        if k_kept is not None:  # ∇Q = Σ_j ∇S_{:,j} K_j over the kept key rows
            key_tilde = scatter_rows(k_kept, k_rows, m)
            grad_query = (g @ key_tilde.to(g.dtype)).view(b, h, n, d).to(ctx.dtypes[0])
            if k_slots is not None:  # ‖∇S_{:,j}‖ per key row, (B, H, m)
                ctx.k_sampler.record(k_slots, torch.linalg.vector_norm(grad_scores, dim=-2, dtype=norm_dtype))
        if q_kept is not None:  # ∇K = Σ_i ∇S_{i,:}ᵀ Q_i over the kept query rows
            query_tilde = scatter_rows(q_kept, q_rows, n)
            grad_key = (g.transpose(1, 2) @ query_tilde.to(g.dtype)).view(b, h, m, -1).to(ctx.dtypes[1])
            if q_slots is not None:  # ‖∇S_{i,:}‖ per query row, (B, H, n)
                ctx.q_sampler.record(q_slots, row_norms(grad_scores))
        return grad_query, grad_key, None, None, None


def compute_dtype(*operands: torch.Tensor) -> torch.dtype:
    """The dtype a stock matmul of these operands computes in: autocast's where it is on, else their promoted dtype."""
    device = operands[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    dtype = operands[0].dtype
    for t in operands[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      position_bias: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hugging Face's eager attention (BERT's; T5's with `position_bias`), with QKᵀ and/or P·V sampled where the module
    has samplers and trains with gradients on."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    training = module.training and torch.is_grad_enabled()
    score_samplers = getattr(module, SCORE_SAMPLERS_ATTRIBUTE, None) if training else None
    if score_samplers is None:
        scores = torch.matmul(query, key.transpose(2, 3))
    else:
        dtype = compute_dtype(query, key)
        with torch.autocast(query.device.type, enabled=False):
            scores = _SampledQK.apply(query, key, *score_samplers, dtype)
    scores = scores * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    # the stock eager paths add a mask in the model's dtype (float32 under bf16 autocast) to the scores, so their
    # softmax, dropout and P·V run in that dtype; doing the same keeps the numerics, and the memory comparison, like
    # for like (transformers passes no mask at all here when nothing is padded)
    model_dtype = next(module.parameters()).dtype
    probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, model_dtype))
    sampler = getattr(module, SAMPLER_ATTRIBUTE, None) if training else None
    if sampler is None:
        probs = fast_dropout(probs, p=dropout, training=module.training)
        return torch.matmul(probs, value.to(probs.dtype)).transpose(1, 2).contiguous(), probs
    dtype = torch.promote_types(probs.dtype, value.dtype)
    with torch.autocast(probs.device.type, enabled=False):
        out = _SampledPV.apply(probs, value, sampler, float(dropout), dtype)
    return out.transpose(1, 2).contiguous(), None


def install_attention_function() -> None:
    """Register `attention_forward` (and the eager mask it expects) with transformers under ATTENTION_NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
