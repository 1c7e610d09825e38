"""CHILD-TUNING_D (Xu et al., EMNLP 2021, "Raise a Child in Large Language Model"): before training, estimate a
diagonal Fisher over the training set, keep the top `reserve_p` fraction of the encoder blocks' entries (the "child
network"), and during fine-tuning zero the gradients of every other block entry.

Fisher pass (official `alibaba/AliceMind` `ChildTuning/ChildTuningD.py::calculate_fisher`, docs/methods/stability.md#child-tuning_d): shuffled
training batches, training-mode forward (dropout on), backward, each parameter tensor's gradient clipped to norm
`fisher_clip_norm` on its own, `F += grad² / #batches`; only parameters inside the transformer blocks (official: name
contains "layer"; here: under the backbone's `layers_path` and any `extra_stacks`, i.e. every block weight, bias and
LayerNorm); embeddings, pooler and classifier are always fully updated. One global threshold over all those entries
keeps the top fraction.

Choices made here:
* The Fisher pass runs in `on_fit_start` over `ctx.train_dataloader()` (the data module's own iterator, same
  batch size and shuffling as training) under the trainer's precision context (`ctx.autocast()`). A Fisher "batch" is one optimizer-step
  batch: with gradient accumulation k, k micro-batches (loss / k each) are summed before clipping and squaring, so the
  mask does not depend on how a step is split into micro-batches. With k = 1 this is exactly the official pass.
* `fisher_batches` (null = the whole training set, as the paper) bounds the pass to its first N step-batches for a
  cheaper estimate; the report says how many were used.
* The mask keeps exactly round(reserve_p · n) entries (top-k over the concatenated Fisher); the official code thresholds
  at `np.percentile(F, 100·(1 − p))` with `F >= threshold`, which keeps the same set up to interpolation and ties.
* Masking happens in `on_before_optimizer_step`, i.e. before Lightning's gradient clipping; the official optimizer
  masks inside AdamW.step, after the HF Trainer clipped the unmasked gradients. Here the clip norm is therefore
  measured on the masked gradients. The mask is fixed from the first step, so Adam's moments of masked entries stay 0
  and their update is 0, except that AdamW's decoupled weight decay still shrinks them (as in the official optimizer);
  with the default weight_decay 0 they keep their pretrained values.
* The masks live on the method instance (not in checkpoints): a resumed run recomputes them. Under data-parallel
  training the Fisher is averaged over processes before the top-k, so all processes mask the same entries.
* Under `16-mixed` the Fisher pass runs in fp16 autocast without loss scaling (small gradients may flush to 0); use
  `bf16-mixed` (the default) or fp32.

Written by hand: no library implements Fisher-masked fine-tuning; the gradient masking itself is one `mul_` per tensor.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import block_stacks
from ...errors import BackboneError, ConfigError, require
from ..base import Method
from ..context import MethodContext

log = logging.getLogger("ftlab")


def top_fraction_masks(scores: dict[str, torch.Tensor], fraction: float) -> tuple[dict[str, torch.Tensor], float]:
    """Boolean masks keeping exactly round(fraction · n) of the highest entries over all tensors, and the lowest kept
    score (the global threshold)."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = max(1, min(flat.numel(), round(fraction * flat.numel())))
    selected = torch.topk(flat, keep, sorted=False).indices
    kept = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    kept[selected] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = kept[start:start + s.numel()].view_as(s)
        start += s.numel()
    return masks, float(flat[selected].min())


class ChildTuningD(Method):
    name = "child_tuning_d"
    resume_attributes = None  # the Fisher mask is estimated at fit start from the pretrained weights

    def __init__(self, reserve_p: float = 0.3, fisher_batches: int | None = None, fisher_clip_norm: float | None = 1.0):
        require(0 < float(reserve_p) <= 1,
                f"method.reserve_p={reserve_p} must be in (0, 1]: the fraction of block entries that are updated "
                f"(the paper's grid is 0.1, 0.2, 0.3)")
        require(fisher_batches is None or (isinstance(fisher_batches, int) and fisher_batches >= 1),
                f"method.fisher_batches={fisher_batches!r} must be null (the whole training set) or a whole number >= 1")
        require(fisher_clip_norm is None or float(fisher_clip_norm) > 0,
                f"method.fisher_clip_norm={fisher_clip_norm} must be null (no clipping) or > 0 (official: max_grad_norm 1.0)")
        self.reserve_p, self.fisher_batches = float(reserve_p), fisher_batches
        self.fisher_clip_norm = None if fisher_clip_norm is None else float(fisher_clip_norm)
        self.prefixes: tuple[str, ...] = ()
        self.masks: dict[str, torch.Tensor] = {}
        self._params: dict[str, nn.Parameter] = {}
        self.facts: dict[str, Any] = {}

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        self.prefixes = tuple(f"{path}." for path, _ in block_stacks(backbone))
        self._params = {n: p for n, p in model.named_parameters() if n.startswith(self.prefixes) and p.requires_grad}
        require(bool(self._params), f"CHILD-TUNING_D found no trainable parameter under {list(self.prefixes)} in "
                                    f"backbone '{backbone.name}'; check the backbone's layers_path", BackboneError)

    # -- Fisher estimate ------------------------------------------------------------------------------------------
    def estimate_fisher(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        if ctx.train_dataloader is None:
            raise ConfigError("CHILD-TUNING_D estimates the Fisher from the training batches, but this run has none to "
                              "read (MethodContext.train_dataloader); fit with a datamodule (ftlab.train.run does)")
        loader = ctx.train_dataloader()
        group = max(1, int(ctx.accumulate_grad_batches))
        groups = math.ceil(len(loader) / group)
        limit = groups if self.fisher_batches is None else min(self.fisher_batches, groups)
        model = ctx.model
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self._params.items()}
        was_training = model.training
        model.train()  # dropout on, as the official pass
        model.zero_grad(set_to_none=True)
        done, pending = 0, 0
        for batch in loader:
            batch = {k: v.to(ctx.device) for k, v in batch.items()}
            with ctx.autocast():
                loss = ctx.forward(batch).loss
            (loss / group).backward()
            pending += 1
            if pending == group:
                self._accumulate(fisher)
                done, pending = done + 1, 0
                model.zero_grad(set_to_none=True)
                if done == limit:
                    break
        if pending:  # the last, shorter step of the epoch (Lightning steps on it too)
            self._accumulate(fisher)
            done += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for name, f in fisher.items():
            # every process must select the same child network: average the estimate over processes (no-op on one)
            fisher[name] = ctx.mean_over_processes(f.div_(done))
        self.facts["fisher_batches_used"] = done
        self.facts["fisher_batches_available"] = groups
        return fisher

    @torch.no_grad()
    def _accumulate(self, fisher: dict[str, torch.Tensor]) -> None:
        for name, p in self._params.items():
            if p.grad is None:  # unused in this forward: zero Fisher contribution
                continue
            if self.fisher_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(p, self.fisher_clip_norm)  # per tensor, as the official code
            fisher[name].add_(p.grad.float().pow(2))

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_fit_start(self, ctx: MethodContext) -> None:
        start = time.perf_counter()
        fisher = self.estimate_fisher(ctx)
        self.masks, threshold = top_fraction_masks(fisher, self.reserve_p)
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        self.facts.update(fisher_seconds=time.perf_counter() - start, threshold=threshold, kept=kept, total=total,
                          kept_fraction=kept / total, masked_tensors=len(self.masks))
        log.info("CHILD-TUNING_D: kept %d of %d block entries (%.3f) from %d Fisher batches in %.1fs",
                 kept, total, kept / total, self.facts["fisher_batches_used"], self.facts["fisher_seconds"])

    @torch.no_grad()
    def on_before_optimizer_step(self, ctx: MethodContext, optimizer: torch.optim.Optimizer) -> None:
        for name, mask in self.masks.items():
            grad = self._params[name].grad
            if grad is not None:
                grad.mul_(mask)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {"reserve_p": self.reserve_p, "fisher_clip_norm": self.fisher_clip_norm, **self.facts}
