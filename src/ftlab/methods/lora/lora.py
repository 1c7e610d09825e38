"""LoRA (Hu et al. 2021): a frozen weight W plus a trainable low-rank update, h = W x + (alpha/r) B A x, on chosen
block linears; the adapter layer and its model surgery are methods/adapters.py (shared with DSEE and LoRA-WTACRS)."""
from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig
from torch import nn

from ...errors import ConfigError
from ..adapters import INITS, add_lora, freeze_for_adapters, merge_lora
from ..base import Method
from ..context import MethodContext
from .efficiency import dense_reference, efficiency_report


class LoRA(Method):
    """LoRA on the block linears of `roles` (default q and v, the paper's best); trains the adapters and the task head.

    With `merge_at_end` the adapters are folded into W after training (inference then costs exactly the dense model).
    """

    name = "lora"
    # a classifier (tiny BERT), and GPT-2's fused c_attn on E2E generation as in the paper's recipe
    tiny_runs = ((), ("backbone=tiny-gpt2", "task=e2e", "data.max_eval_samples=4", "task.decoding.max_new_tokens=4",
                      "task.decoding.num_beams=1", "task.decoding.batch_size=4", "task.metrics=[bleu]"))

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        roles: Sequence[str] = ("q", "v"),
        init: str = "kaiming",
        merge_at_end: bool = False,
    ):
        if not (isinstance(r, int) and r >= 1):
            raise ConfigError(f"lora: rank r={r!r} must be a positive integer, e.g. method.r=8")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"lora: dropout={dropout} must be in [0, 1)")
        if init not in INITS:
            raise ConfigError(f"lora: init={init!r} is not valid; choose one of {list(INITS)}")
        self.r, self.alpha, self.dropout, self.init = r, alpha, dropout, init
        self.roles = [roles] if isinstance(roles, str) else list(roles)
        self.merge_at_end = merge_at_end
        self.backbone: DictConfig | None = None
        self.dense: dict[str, float] = {}

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        self.backbone = backbone
        self.dense = dense_reference(model, backbone)
        add_lora(model, backbone, self.roles, self.r, self.alpha, self.dropout, 0, self.init)
        freeze_for_adapters(model, backbone)

    def on_fit_end(self, ctx: MethodContext) -> None:
        if self.merge_at_end:
            merge_lora(ctx.model)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {"roles": self.roles, "r": self.r, "alpha": self.alpha, "merged": self.merge_at_end,
                **efficiency_report(ctx.model, self.backbone, self.dense)}
