"""Consistency terms shared by R3F and R-Drop: symmetric KL between two predictions of the same batch, in fp32, and
the paired forward both methods train with.

Written by hand because it is three lines of `torch.nn.functional`; what matters is the reduction, which the two papers'
code bases choose differently and which changes the effective weight of the term:

* per example, the KL is summed over classes (a divergence between two distributions);
* over the batch, `"mean"` divides by the batch size (fairseq's R3F criterion: sum / batch size) and is invariant to
  gradient accumulation (two half batches averaged = the full batch), `"sum"` does not divide (the R-Drop README).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..context import MethodContext, model_inputs

Reduction = Literal["mean", "sum"]


def symmetric_kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) + KL(Q‖P) per example (shape: batch), from logits over the last axis; fp32, autocast off.

    Neither side is detached: both predictions receive gradients, as in the official R3F and R-Drop code.
    """
    with torch.autocast(device_type=p_logits.device.type, enabled=False):
        log_p = F.log_softmax(p_logits.float(), dim=-1)
        log_q = F.log_softmax(q_logits.float(), dim=-1)
        # log_target=True: exp(log_p) * (log_p - log_q) is exactly 0 for identical inputs, never NaN for tiny probabilities
        kl_pq = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
        kl_qp = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    return (kl_pq + kl_qp).reshape(p_logits.shape[0], -1).sum(-1)


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Symmetric KL reduced over the batch: `mean` (per-example average) or `sum`."""
    per_example = symmetric_kl_per_example(p_logits, q_logits)
    return per_example.mean() if reduction == "mean" else per_example.sum()


def squared_difference(p: torch.Tensor, q: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """The regression counterpart: (p − q)² per example, in fp32, reduced over the batch like `symmetric_kl`."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        per_example = (p.float() - q.float()).pow(2).reshape(p.shape[0], -1).mean(-1)
    return per_example.mean() if reduction == "mean" else per_example.sum()


class TermLog:
    """Logs a consistency term each step and keeps its running mean for the run record (no host sync per step)."""

    def __init__(self, log_name: str):
        self.log_name, self.total, self.count = log_name, None, 0

    def add(self, ctx: MethodContext, term: torch.Tensor, batch_size: int) -> None:
        detached = term.detach()
        self.total = detached if self.total is None else self.total + detached
        self.count += 1
        ctx.log(self.log_name, detached, batch_size=batch_size)

    @property
    def mean(self) -> float | None:
        return float(self.total) / self.count if self.count else None


@dataclass
class TwoPasses:
    """Two predictions of one batch and the supervised loss the training module back-propagates with them."""
    loss: torch.Tensor
    logits: torch.Tensor
    second_logits: torch.Tensor


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """The loss a Hugging Face sequence-classification head computes from `labels` (MSE for one regression output,
    cross-entropy otherwise), in fp32."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        if regression:
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))


def paired_forward(ctx: MethodContext, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, first logits, second logits) from one forward of the batch concatenated with itself.

    One pass over 2B rows instead of two over B (as the official R-Drop code): each row draws its own dropout mask,
    so the halves are two independent passes, and the larger matrix products use the CPU better
    (`benchmarks/regulariser_overhead.py`). A method that perturbs the second pass does it to the second half (R3F).
    """
    inputs = model_inputs(batch)
    labels = inputs.pop("labels")
    logits = ctx.model(**{k: torch.cat([v, v]) for k, v in inputs.items()}).logits
    first, second = logits.chunk(2)
    return labels, first, second
