"""DSEE (Chen et al., ACL 2023): LoRA plus a sparse residual, then prune the pre-trained weights guided by the update.

    W_eff = W * M + s (B A + P_Omega(S)),   s = alpha / r          (docs/methods/lora.md#dsee-parameterisation; layer in methods/adapters.py)

Two phases, inside one Lightning fit and keyed on epochs, with the pruning switch between them (at the end of epoch
`phase1_epochs`, after that epoch's validation):

* Before training (`on_fit_start`): Omega (|Omega| = num_sparse per adapted matrix) from GreBsmo robust PCA of each
  pre-trained adapted matrix (methods/lora/grebsmo.py), computed on rank 0 and broadcast. GPT-2's fused c_attn: one
  Omega per q / v slice.
* Phase 1, epochs 1..phase1_epochs: train A, B, S_Omega and the task head (W frozen, unpruned); the learning-rate
  schedule spans these epochs only (`schedule_steps`), as the official stage-1 run does.
* The switch: restore the adapters of the best phase-1 epoch on dev (`prune_from=best`, the official
  load_best_model_at_end), then prune
  - unstructured: keep a fraction `density` of the pre-trained weights. Two global groups, each pruned to `density`
    as the official run_glue_prune_with_WAB.py does: the adapted matrices ranked jointly across layers by the
    criterion (|dW| by default), and all other block linears (and the pooler) ranked jointly by |W|. Exactly
    round(density * n) weights survive in each group. `prune_scope=adapted` prunes only the adapted matrices
    (the paper's Table 7 ablation). Masks are kept as `weight_mask` buffers and W is zeroed in place (W is frozen).
  - structured: remove the `heads` lowest-scoring heads of every layer (score = sum of |dW_q| + |dW_v| over the
    head's rows), physically shrinking q, k, v, attn_out, B and S (methods/lora/head_pruning.py).
  Criterion: `delta` |dW| (DSEE), `merged` |W + dW|, `random`.
* Phase 2, epochs phase1_epochs+1..train.epochs: recovery with W fixed, from the phase-1 adapters, with a fresh AdamW
  and schedule (`ctx.restart_schedule()`: the training module re-creates both through Lightning, and
  `schedule_steps` then spans the recovery epochs). Phase-1 evaluations are moved out of the run's history
  (`ctx.reset_history()`) into this method's report (`phase1`), so the run's best-on-dev is a pruned model's.

`prune=none` is the unpruned "dW_l + dW_s" of the paper's Tables 1-2 (with num_sparse=0 it is LoRA with DSEE's
Gaussian init of A). `merge_at_end` folds dW into W and re-applies the masks, so pruned weights stay zero (the
official code's merge fills them again). Structured pruning creates new parameters and so needs a single process
(DDP's reducer would keep the old ones). With train.save_checkpoints=true, Lightning's checkpoint callback ranks
epochs over the whole fit and may keep an (unpruned) phase-1 epoch as its "best" file; the run record's best is
always a recovery epoch. The DSEE experiments turn checkpoints off.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import as_out_in, block_layers, block_linears, weight_shape
from ...errors import ConfigError
from ..adapters import INITS, LoRALayer, add_lora, freeze_for_adapters, lora_layers, merge_lora
from ..base import Method
from ..context import MethodContext
from .efficiency import dense_reference, efficiency_report
from .grebsmo import OMEGA_METHODS, omega_indices
from .head_pruning import head_geometry, head_scores, lowest_heads, remove_heads

PRUNE_MODES = ("none", "unstructured", "structured")
CRITERIA = ("delta", "merged", "random")
SCOPES = ("all", "adapted")


def keep_largest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping exactly `keep` of the largest scores (ties at the threshold filled in index order)."""
    n = scores.numel()
    if keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores.float().cpu(), n - keep).values.to(scores.device)
    mask = scores > threshold
    deficit = keep - int(mask.sum())
    if deficit > 0:
        ties = torch.nonzero(scores == threshold).flatten()[:deficit]
        mask[ties] = True
    return mask


def no_recovery_error(phase1_epochs: Any, epochs: Any) -> ConfigError:
    """The one message for DSEE phases that leave no recovery epochs (from validation, before anything loads, and from
    the fit itself)."""
    return ConfigError(
        f"dsee: phase 1 takes method.phase1_epochs={phase1_epochs} epochs, so train.epochs="
        f"{epochs} leaves none for recovery after pruning; set train.epochs to phase 1 + recovery "
        f"(paper RTE: train.epochs=15 with method.phase1_epochs=5), or method.prune=none"
    )


class DSEE(Method):
    name = "dsee"
    resume_attributes = None  # the switch rebuilds the optimizer mid-fit; a phase-2 resume would need it rebuilt too
    # both phases in two tiny epochs: unstructured (the default) and structured pruning
    tiny_runs = (("train.epochs=2", "method.phase1_epochs=1", "method.r=4"),
                 ("train.epochs=2", "method.phase1_epochs=1", "method.r=4", "method.prune=structured", "method.heads=1"))

    def __init__(
        self,
        roles: Sequence[str] = ("q", "v"),
        r: int = 16,
        alpha: float = 32,
        num_sparse: int = 16,   # the sparse residual S_Omega beside the low-rank B A
        omega: str = "grebsmo",
        init: str = "gaussian",
        dropout: float = 0.0,
        prune: str = "unstructured",
        density: float = 0.8,
        heads: int = 3,
        criterion: str = "delta",
        prune_scope: str = "all",
        prune_pooler: bool = True,
        phase1_epochs: int = 5,
        prune_from: str = "best",
        merge_at_end: bool = False,
    ):
        def choose(key: str, value: str, valid: Sequence[str]) -> None:
            if value not in valid:
                raise ConfigError(f"dsee: {key}={value!r} is not valid; choose one of {list(valid)}")

        choose("prune", prune, PRUNE_MODES)
        choose("criterion", criterion, CRITERIA)
        choose("prune_scope", prune_scope, SCOPES)
        choose("omega", omega, OMEGA_METHODS)
        choose("init", init, INITS)
        choose("prune_from", prune_from, ("best", "last"))
        if not (isinstance(r, int) and r >= 1):
            raise ConfigError(f"dsee: rank r={r!r} must be a positive integer (paper: 16 for BERT-base)")
        if not (isinstance(num_sparse, int) and num_sparse >= 0):
            raise ConfigError(f"dsee: num_sparse={num_sparse!r} (|Omega| per matrix) must be an integer >= 0 (paper: 16)")
        if not 0.0 < density <= 1.0:
            raise ConfigError(f"dsee: density={density} must be in (0, 1] (fraction of pre-trained weights kept, e.g. 0.8)")
        if prune == "structured" and not (isinstance(heads, int) and heads >= 1):
            raise ConfigError(f"dsee: heads={heads!r} (heads removed per layer) must be a positive integer, e.g. 3")
        if prune != "none" and not (isinstance(phase1_epochs, int) and phase1_epochs >= 1):
            raise ConfigError(f"dsee: phase1_epochs={phase1_epochs!r} must be a positive integer")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dsee: dropout={dropout} must be in [0, 1)")
        self.r, self.alpha, self.dropout, self.init = r, alpha, dropout, init
        self.roles = [roles] if isinstance(roles, str) else list(roles)
        self.num_sparse, self.omega = num_sparse, omega
        self.prune, self.density, self.heads = prune, density, heads
        self.criterion, self.prune_scope, self.prune_pooler = criterion, prune_scope, prune_pooler
        self.phase1_epochs, self.prune_from, self.merge_at_end = phase1_epochs, prune_from, merge_at_end
        # per-run state (on the instance, never on the class)
        self.backbone: DictConfig | None = None
        self.dense: dict[str, float] = {}
        self.phase = 1
        self.best_phase1: dict[str, torch.Tensor] | None = None
        self.best_phase1_score: float | None = None
        self.phase1_history: list[dict[str, Any]] = []
        self.removed_heads: dict[int, list[int]] = {}
        self.facts: dict[str, Any] = {}

    @classmethod
    def check_run(cls, method: dict[str, Any], train: dict[str, Any]) -> None:
        """Pruning needs recovery epochs after phase 1: fail before the model loads, with the fit's own message. A run
        bounded by train.max_steps (epochs -1) is checked when the fit knows its epochs."""
        prune, phase1, epochs = method.get("prune", "unstructured"), method.get("phase1_epochs", 5), train.get("epochs")
        if prune != "none" and isinstance(epochs, int) and epochs >= 1 and isinstance(phase1, int) and epochs <= phase1:
            raise no_recovery_error(phase1, epochs)

    # -- setup -----------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        self.backbone = backbone
        self.dense = dense_reference(model, backbone)
        if self.prune == "structured":
            heads, _ = head_geometry(model)
            if self.heads >= heads:
                raise ConfigError(
                    f"dsee: heads={self.heads} removed per layer but the model has {heads} heads per layer; "
                    f"remove at most {heads - 1} (paper: 3, 6 or 9 of BERT-base's 12)"
                )
        add_lora(model, backbone, self.roles, self.r, self.alpha, self.dropout, self.num_sparse, self.init)
        freeze_for_adapters(model, backbone)

    def schedule_steps(self, ctx: MethodContext, steps_left: int) -> int:
        steps = self._phase_steps(ctx, steps_left)
        self.facts.setdefault("schedule_steps", []).append(steps)  # one entry per optimizer (re)creation
        return steps

    def _phase_steps(self, ctx: MethodContext, steps_left: int) -> int:
        if self.prune == "none" or self.phase != 1:
            return steps_left
        if ctx.max_epochs is None or ctx.max_epochs <= self.phase1_epochs:
            raise no_recovery_error(self.phase1_epochs, ctx.max_epochs)
        return min(steps_left, ctx.steps_per_epoch * self.phase1_epochs)

    @torch.no_grad()
    def on_fit_start(self, ctx: MethodContext) -> None:
        if self.prune == "structured" and ctx.world_size > 1:
            raise ConfigError("dsee: structured pruning replaces parameters mid-fit and needs a single process (devices=1)")
        self.initialise_omega(ctx.model, broadcast=ctx.broadcast, is_rank_zero=ctx.is_global_zero)

    @torch.no_grad()
    def initialise_omega(self, model: nn.Module, broadcast: Any = None, is_rank_zero: bool = True) -> None:
        """Fix Omega of every adapted matrix (computed on rank 0, then `broadcast`); usable outside a Trainer."""
        layers = [layer for layer in lora_layers(model) if layer.num_sparse]
        if not layers:
            return
        start = time.perf_counter()
        omegas = self._omegas(layers) if is_rank_zero else None
        if broadcast is not None:
            omegas = broadcast(omegas)
        for layer, (rows, cols) in zip(layers, omegas):
            layer.set_omega(rows.to(layer.sparse_rows.device), cols.to(layer.sparse_cols.device))
        self.facts["omega_seconds"] = time.perf_counter() - start

    def _omegas(self, layers: list[LoRALayer]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, cols) per layer; one GreBsmo batch per matrix shape (a fused layer contributes one matrix per slice)."""
        # a local generator: Omega depends on the run seed but never shifts the global RNG (data order, dropout)
        generator = torch.Generator().manual_seed(torch.initial_seed())
        matrices = []  # (layer index, slice start, matrix)
        for i, layer in enumerate(layers):
            weight = as_out_in(layer.base, layer.base.weight)
            matrices += [(i, start, weight[start:stop]) for start, stop in layer.slices]
        found: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for shape in dict.fromkeys(m.shape for _, _, m in matrices):
            group = [(i, start, m) for i, start, m in matrices if m.shape == shape]
            per_slice = layers[group[0][0]].num_sparse // len(layers[group[0][0]].slices)
            rows, cols = omega_indices(torch.stack([m for _, _, m in group]), per_slice, self.omega, generator)
            for (i, start, _), r, c in zip(group, rows, cols):
                found[(i, start)] = (r + start, c)
        return [
            tuple(torch.cat([found[(i, start)][k] for start, _ in layer.slices]).cpu() for k in (0, 1))
            for i, layer in enumerate(layers)
        ]

    # -- phase 1 bookkeeping ---------------------------------------------------------------------------------------
    def on_validation_end(self, ctx: MethodContext) -> None:
        if self.phase != 1 or self.prune == "none" or ctx.sanity_checking or not ctx.history:
            return
        split, metric = ctx.selection
        score = ctx.history[-1]["metrics"].get(split, {}).get(metric)
        if score is not None and (self.best_phase1_score is None or score > self.best_phase1_score):
            self.best_phase1_score = score
            self.best_phase1 = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}

    def on_train_epoch_end(self, ctx: MethodContext, epoch: int) -> None:
        if self.prune != "none" and self.phase == 1 and epoch + 1 == self.phase1_epochs:
            self.switch_to_recovery(ctx)

    # -- the switch: prune, then a fresh optimizer for phase 2 ---------------------------------------------------------
    def switch_to_recovery(self, ctx: MethodContext) -> None:
        model = ctx.model
        if self.prune_from == "best" and self.best_phase1 is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.best_phase1.items():
                    params[name].copy_(value)
        self.best_phase1 = None
        # the run's best-on-dev must be a pruned model's: phase 1's evaluations leave the run's history for the report
        self.phase1_history = [{k: h[k] for k in ("epoch", "step", "metrics")} for h in ctx.reset_history()]
        generator = torch.Generator().manual_seed(torch.initial_seed() + 1)
        if self.prune == "unstructured":
            self.facts.update(self.prune_unstructured(model, generator))
        else:
            self.removed_heads = lowest_heads(head_scores(model, self.backbone, self.criterion, generator), self.heads)
            remove_heads(model, self.backbone, self.removed_heads)
        self.phase = 2  # recovery
        self.facts["switch_step"] = ctx.global_step
        ctx.restart_schedule()  # fresh AdamW + schedule over the recovery epochs

    @torch.no_grad()
    def prune_unstructured(self, model: nn.Module, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Zero the pre-trained weights outside the kept set; masks go to `weight_mask` buffers. Returns densities."""
        modules = dict(block_linears(model, self.backbone))
        if self.prune_pooler and self.backbone.get("pooler"):
            modules[self.backbone.pooler] = model.get_submodule(self.backbone.pooler)
        groups: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {"adapted": [], "others": []}
        for name, module in modules.items():
            base = module.base if isinstance(module, LoRALayer) else module
            weight = as_out_in(base, base.weight).float()
            adapted_rows = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
            if isinstance(module, LoRALayer):
                adapted_rows[module.lora_rows] = True
                delta = module.delta_weight().float()
                score = {"delta": delta.abs(), "merged": (weight + delta).abs()}.get(self.criterion)
                if score is None:
                    score = torch.rand(weight.shape, generator=generator).to(weight.device)
                groups["adapted"].append((name, adapted_rows, score[adapted_rows]))
            if (~adapted_rows).any() and self.prune_scope == "all":
                groups["others"].append((name, ~adapted_rows, weight[~adapted_rows].abs()))
        masks: dict[str, torch.Tensor] = {}
        kept: dict[str, float] = {}
        for group, pieces in groups.items():
            if not pieces:
                continue
            flat = torch.cat([score.flatten() for _, _, score in pieces])
            keep = keep_largest(flat, round(self.density * flat.numel()))
            kept[group] = float(keep.float().mean())
            offset = 0
            for name, rows, score in pieces:
                piece = keep[offset:offset + score.numel()].view_as(score)
                offset += score.numel()
                base = modules[name].base if isinstance(modules[name], LoRALayer) else modules[name]
                full = masks.setdefault(name, torch.ones(weight_shape(base), dtype=torch.bool,
                                                          device=base.weight.device))
                full[rows] = piece
        for name, mask in masks.items():
            base = modules[name].base if isinstance(modules[name], LoRALayer) else modules[name]
            stored = as_out_in(base, mask).contiguous().to(base.weight.dtype)
            base.weight.mul_(stored)
            base.register_buffer("weight_mask", stored)
        total = sum(m.numel() for m in masks.values())
        return {"pruned_group_density": kept, "prunable_density": sum(int(m.sum()) for m in masks.values()) / total}

    # -- end -------------------------------------------------------------------------------------------------------
    def on_fit_end(self, ctx: MethodContext) -> None:
        if self.merge_at_end:
            merge_lora(ctx.model)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        heads = head_geometry(ctx.model)[0] if self.prune == "structured" else None
        layers = len(block_layers(ctx.model, self.backbone))
        phase1_best = None
        if self.phase1_history:
            split, metric = ctx.selection
            phase1_best = max(self.phase1_history, key=lambda h: h["metrics"].get(split, {}).get(metric, float("-inf")))
        return {
            "roles": self.roles, "r": self.r, "alpha": self.alpha, "num_sparse": self.num_sparse, "omega": self.omega,
            "prune": self.prune, "density_target": self.density if self.prune == "unstructured" else None,
            "criterion": self.criterion, "prune_scope": self.prune_scope, "merged": self.merge_at_end,
            "heads_per_layer": heads,
            "heads_removed_per_layer": [len(self.removed_heads.get(i, [])) for i in range(layers)],
            "removed_heads": {str(i): h for i, h in self.removed_heads.items()},
            "phase": self.phase,
            "phase1": {"epochs": self.phase1_epochs, "best": phase1_best, "history": self.phase1_history}
            if self.prune != "none" else None,
            **self.facts,
            **efficiency_report(ctx.model, self.backbone, self.dense),
        }
