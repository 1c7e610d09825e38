"""Head-only fine-tuning (a linear probe): every backbone weight frozen, only the task head (and, if asked, the pooler)
trained. A toy: what adding a method takes is this file and conf/method/head_only.yaml."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from ..errors import BackboneError, require
from .base import Method
from .context import MethodContext


class HeadOnly(Method):
    name = "head_only"

    def __init__(self, include_pooler: bool = False):
        self.include_pooler = bool(include_pooler)
        self.trained: list[str] = []

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        modules = list(backbone.get("head") or []) + ([backbone.pooler] if self.include_pooler and backbone.get("pooler") else [])
        require(bool(modules), f"backbone '{backbone.name}' lists no `head` modules to train", BackboneError)
        prefixes = tuple(f"{name}." for name in modules)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(prefixes))
        self.trained = [name for name, parameter in model.named_parameters() if parameter.requires_grad]

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {"include_pooler": self.include_pooler, "trained": self.trained,
                "trainable_params": sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)}
