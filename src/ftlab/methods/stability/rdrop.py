"""R-Drop (Wu et al., NeurIPS 2021): the same batch goes through the model twice with dropout active (two different
dropout masks); the two predictions are pulled together by a symmetric KL.

  loss = CE-combination(CE₁, CE₂) + α · ½ [KL(P₁‖P₂) + KL(P₂‖P₁)]

Both passes run as one forward of the batch concatenated with itself (`consistency.paired_forward`), as the official
code does (`R-Drop/huggingface_transformer_src/.../modeling_bert.py`); the supervised losses are computed per copy
from the logits, the same losses the Hugging Face heads compute.

Documented choices (they change the effective α, so a table must say which was used):
* `ce`: `mean` = ½(CE₁ + CE₂) (default; the loss has the scale of plain fine-tuning), `sum` = CE₁ + CE₂ (the official
  Hugging Face GLUE code, `huggingface_transformer_src/.../modeling_bert.py::bert_kl`), `first` = CE₁ only.
* `kl_reduction`: `mean` = KL summed over classes, averaged over the batch (default; invariant to gradient
  accumulation), `sum` = summed over the batch too (README's `compute_kl_loss`; the official GLUE code sums and uses
  0.25·(KL+KL) = α 0.5 with `sum`). With `sum` the term grows with the (micro-)batch size, so it is not invariant to
  gradient accumulation.
* Regression (STS-B) `regression_term`: `mse` = α · batch-mean (ŷ₁ − ŷ₂)² (the official GLUE code adds MSE(ŷ₁, ŷ₂)
  with weight 1), `none` = only the combined MSE losses.
* `dropout`: null keeps the backbone's dropout (0.1 for BERT/MiniLM, the DPS grid's p = 0.1); a number sets every
  `nn.Dropout` (attention dropout included). With no active dropout the two passes agree and the KL is 0.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ...errors import require
from ..base import Method
from .consistency import TermLog, TwoPasses, paired_forward, squared_difference, supervised_loss, symmetric_kl
from ..context import MethodContext

log = logging.getLogger("ftlab")

CE_MODES = ("mean", "sum", "first")
KL_REDUCTIONS = ("mean", "sum")
REGRESSION_TERMS = ("mse", "none")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every nn.Dropout in `model` to `p`; returns how many were set."""
    modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in modules:
        m.p = p
    return len(modules)


class RDrop(Method):
    name = "rdrop"

    def __init__(
        self,
        alpha: float = 1.0,
        ce: str = "mean",
        kl_reduction: str = "mean",
        regression_term: str = "mse",
        dropout: float | None = None,
    ):
        require(float(alpha) >= 0, f"method.alpha={alpha} must be >= 0 (the KL weight; the DPS grid is 0.1, 0.5, 1, 3, 5)")
        require(ce in CE_MODES, f"method.ce={ce!r} is not valid: choose one of {list(CE_MODES)}")
        require(kl_reduction in KL_REDUCTIONS,
                f"method.kl_reduction={kl_reduction!r} is not valid: choose one of {list(KL_REDUCTIONS)}")
        require(regression_term in REGRESSION_TERMS,
                f"method.regression_term={regression_term!r} is not valid: choose one of {list(REGRESSION_TERMS)}")
        require(dropout is None or 0 <= float(dropout) < 1,
                f"method.dropout={dropout} must be null (keep the backbone's dropout) or in [0, 1)")
        self.alpha, self.ce, self.kl_reduction = float(alpha), ce, kl_reduction
        self.regression_term = regression_term
        self.dropout = None if dropout is None else float(dropout)
        self._term = TermLog("train/rdrop_term")

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        if self.dropout is not None:
            set_dropout(model, self.dropout)
        if not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
            log.warning("R-Drop: the model has no active dropout, so both passes agree and the KL term is 0; "
                        "set method.dropout=0.1 to get the method's regulariser")

    def combine_losses(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        if self.ce == "mean":
            return (first + second) / 2
        return first + second if self.ce == "sum" else first

    def consistency_term(self, ctx: MethodContext, first_logits: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor | None:
        """The unweighted term between two predictions, or None where none applies (regression with `none`)."""
        if ctx.task_kind == "regression":
            if self.regression_term == "none":
                return None
            return squared_difference(first_logits, second_logits, self.kl_reduction)
        return 0.5 * symmetric_kl(first_logits, second_logits, self.kl_reduction)

    def training_forward(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> TwoPasses:
        labels, first, second = paired_forward(ctx, batch)
        regression = ctx.task_kind == "regression"
        loss = self.combine_losses(supervised_loss(first, labels, regression), supervised_loss(second, labels, regression))
        return TwoPasses(loss, first, second)

    def training_loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor], outputs: TwoPasses, loss: torch.Tensor) -> torch.Tensor:
        term = self.consistency_term(ctx, outputs.logits, outputs.second_logits)
        if term is None:
            return loss
        self._term.add(ctx, term, batch["labels"].shape[0])
        return loss + self.alpha * term

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "ce": self.ce, "kl_reduction": self.kl_reduction,
            "regression_term": self.regression_term, "dropout": self.dropout,
            "term_mean": self._term.mean,
            "second_passes": self._term.count,
        }
