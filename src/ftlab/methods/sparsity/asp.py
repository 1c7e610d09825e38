"""ASP (NVIDIA Automatic SParsity) as NxMTransformer's baseline: one-shot n:m magnitude mask of the *pretrained*
weights of the six block linears, then masked fine-tuning with the masks fixed (docs/methods/sparsity.md#asp; NxMTransformer §4.1).

Mask maintenance follows apex's patched `optimizer.step`: gradients are masked before the update (so Adam's moments of
pruned weights stay zero) and weights are re-masked after it (so weight decay or numerical drift cannot revive them).
Both run once per optimizer step, so gradient accumulation and bf16 autocast need nothing special. Channel
permutation (newer apex) is not done: the 2021 baseline predates it. The masks are bool buffers on the layers (name
`ftlab_mask`), so they are in every checkpoint's state_dict and two runs in one process never share them.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import as_out_in
from ...config import portable_path
from ..base import Method
from .masks import (
    check_divisible, check_nm, layer_mask, mask_gradients_, mask_weights_, nm_mask, save_sparse_model,
    sparse_model_folder, sparsity_report, target_layers,
)
from ..context import MethodContext

MASK = "ftlab_mask"


class ASP(Method):
    name = "asp"

    def __init__(self, n: int = 2, m: int = 4, include_pooler: bool = False, save_model: bool = False):
        check_nm(n, m)
        self.n, self.m, self.include_pooler, self.save_model = n, m, include_pooler, save_model
        self.layers: dict[str, nn.Module] = {}
        self.initial_prune: dict[str, float] = {}

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        self.layers = target_layers(model, backbone, self.include_pooler)
        check_divisible(self.layers, self.m)
        for layer in self.layers.values():
            # all-True until on_fit_start: a real n:m mask (n < m) is never all-True, so a mask loaded from a
            # checkpoint before on_fit_start is recognised and kept
            layer.register_buffer(MASK, torch.ones_like(layer.weight, dtype=torch.bool), persistent=True)

    def masked(self) -> list[tuple[nn.Module, torch.Tensor]]:
        return [(layer, getattr(layer, MASK)) for layer in self.layers.values()]

    @torch.no_grad()
    def on_fit_start(self, ctx: MethodContext) -> None:
        project = partial(nm_mask, n=self.n, m=self.m)
        for name, layer in self.layers.items():
            mask = getattr(layer, MASK)
            if bool(mask.all()) and self.n < self.m:
                w = as_out_in(layer, layer.weight).float()
                mask.copy_(layer_mask(layer, project))
                self.initial_prune[name] = float((w * ~as_out_in(layer, mask)).norm() / w.norm().clamp_min(1e-12))
        mask_weights_(self.masked())

    def on_before_optimizer_step(self, ctx: MethodContext, optimizer: torch.optim.Optimizer) -> None:
        mask_gradients_(self.masked())

    def on_after_optimizer_step(self, ctx: MethodContext) -> None:
        mask_weights_(self.masked())

    def on_fit_end(self, ctx: MethodContext) -> None:
        if self.save_model:
            save_sparse_model(ctx.model, sparse_model_folder(ctx.run_dir), [MASK])

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        report = sparsity_report(self.layers, self.n, self.m, model=ctx.model)
        if self.initial_prune:
            # ||W0 - Pi(W0)|| / ||W0|| per layer: how much of the pretrained weights the one-shot mask removed
            report["initial_prune_relative_change_mean"] = sum(self.initial_prune.values()) / len(self.initial_prune)
        if self.save_model:
            report["saved_model"] = portable_path(sparse_model_folder(ctx.run_dir))
        return report
