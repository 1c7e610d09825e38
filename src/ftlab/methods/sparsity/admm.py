"""ADMM sparsification during fine-tuning: NxMTransformer (n:m, `method=nxm`) and its ADMM_Unstructured baseline
(50% per layer, `method=admm_unstructured`) (NxMTransformer §3, App. A.1; docs/methods/sparsity.md#nxm-admm).

For every target weight W (the six block linears; never embeddings or the classifier) with auxiliary Z and scaled dual
U (fp32 buffers, out of the optimizer, in every checkpoint):

* every micro-batch the loss gets (rho/2) * ||W - Z + U||_F^2, in fp32 (autocast off), so AdamW solves sub-problem 1
  and the pull towards Z passes through Adam's normalisation as in the paper;
* one ADMM iteration (every `iteration_every` optimizer steps, or at the end of every epoch, the paper's choice for
  small tasks): Z <- Pi(W + U), U <- U + W - Z, and the mask similarity |M_k ∩ M_{k-1}| / |M_k| with M = support(Z);
* every evaluation runs on the hard-projected Pi(W) ("a hard prune ... at the end of every epoch, so we evaluate the
  model as if it has already sparsified", NxMTransformer §4.2); the dense W is restored afterwards. Checkpoints written
  during validation therefore hold the projected W that was evaluated;
* at the end of training W <- Pi(W) for good, so the result satisfies the pattern exactly.

Initialisation (not stated in the paper): Z0 = Pi(W0) and U0 = 0. U is the running sum of constraint violations
W - Z, and none has been observed before the first iteration, so it starts at zero; Z0 = Pi(W0) makes the penalty pull
towards a feasible point from the first step, consistent with the paper's Fig. 2 (accuracy first drops because "the
initial model weights are heavily violating the hardware constraints"). NNI's Z0 = W0 would leave the whole first
iteration unregularised.

`masked_retrain_epochs` (default 0): the last k epochs of `train.epochs` become ASP-style masked fine-tuning (hard
prune, penalty off, masked gradients and weights). Off by default because the paper describes no re-training after
ADMM (docs/methods/sparsity.md#final-prune-and-masked-retraining).
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ...config import portable_path
from ...errors import ConfigError, require
from ..base import Method
from .masks import (
    check_density, check_divisible, check_nm, layer_mask, mask_gradients_, mask_weights_, nm_mask,
    save_sparse_model, sparse_model_folder, sparsity_report, target_layers, unstructured_mask,
)
from ..context import MethodContext

Z, U, SUPPORT = "ftlab_admm_z", "ftlab_admm_u", "ftlab_admm_support"


class _Penalty(torch.autograd.Function):
    """(rho/2) ||W - Z + U||^2 with a hand-written backward rho * (W - Z + U): one saved difference and one multiply,
    instead of autograd's chain through sub, add, square and sum (the penalty runs on every micro-batch)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, z: torch.Tensor, u: torch.Tensor, rho: float) -> torch.Tensor:
        diff = (w.detach().float() - z).add_(u)
        ctx.save_for_backward(diff)
        ctx.rho, ctx.weight_dtype = rho, w.dtype
        flat = diff.reshape(-1)
        return 0.5 * rho * torch.dot(flat, flat)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (diff,) = ctx.saved_tensors
        return (diff * (ctx.rho * grad)).to(ctx.weight_dtype), None, None, None


class ADMMSparsity(Method):
    """The ADMM loop; a subclass says which projection (mask_of) and which pattern the report checks."""

    name = "admm"
    resume_attributes = ("phase", "iterations", "final_prune_change", "_last_iteration_step")

    def __init__(
        self, rho: float, iteration_every: int | str = "epoch", masked_retrain_epochs: int = 0,
        include_pooler: bool = False, save_model: bool = False, admm_iterations: int | None = None,
    ):
        require(float(rho) > 0, f"method.rho={rho} must be > 0: it weighs the penalty (rho/2)||W - Z + U||^2; "
                                f"the paper's grid is 3e-3, 6e-3, 1e-2 (small tasks) and 4e-4, 1e-3, 3e-3 (large)")
        if iteration_every != "epoch" and not (isinstance(iteration_every, int) and iteration_every > 0):
            raise ConfigError(
                f"method.iteration_every={iteration_every!r}: use 'epoch' (one ADMM iteration per epoch, the paper's "
                f"choice for small tasks) or a positive number of optimizer steps (the paper: >= 80 steps suffice)"
            )
        require(isinstance(masked_retrain_epochs, int) and masked_retrain_epochs >= 0,
                f"method.masked_retrain_epochs={masked_retrain_epochs!r} must be an integer >= 0 (0 = off)")
        require(admm_iterations is None or (isinstance(admm_iterations, int) and admm_iterations >= 1),
                f"method.admm_iterations={admm_iterations!r} must be null or an integer >= 1")
        self.rho, self.iteration_every = float(rho), iteration_every
        # the paper's schedule is a count: accuracy peaks after ~10 ADMM iterations (App. A.1), whatever the task size
        self.admm_iterations = admm_iterations
        self.masked_retrain_epochs = masked_retrain_epochs
        self.include_pooler, self.save_model = include_pooler, save_model
        self.layers: dict[str, nn.Module] = {}
        self.phase = "admm"  # admm -> masked (optional re-training) -> pruned
        self.iterations: list[dict[str, Any]] = []
        self.final_prune_change: float | None = None
        self._last_iteration_step = -1
        self._dense: dict[str, torch.Tensor] = {}

    # -- pattern (subclasses) -------------------------------------------------------------------------------------
    def mask_of(self, x: torch.Tensor) -> torch.Tensor:
        """Bool mask of Pi(x) for an (out, in) tensor."""
        raise NotImplementedError

    def pattern_report(self, ctx: MethodContext) -> dict[str, Any]:
        raise NotImplementedError

    def check_layers(self) -> None:
        """ConfigError if the pattern cannot apply to some target layer."""

    # -- buffers --------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        self.layers = target_layers(model, backbone, self.include_pooler)
        self.check_layers()
        for layer in self.layers.values():
            # registered here (before a checkpoint could be loaded into them), filled in on_fit_start
            layer.register_buffer(Z, torch.zeros_like(layer.weight, dtype=torch.float32), persistent=True)
            layer.register_buffer(U, torch.zeros_like(layer.weight, dtype=torch.float32), persistent=True)
            layer.register_buffer(SUPPORT, torch.zeros_like(layer.weight, dtype=torch.bool), persistent=True)

    def state(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return getattr(layer, Z), getattr(layer, U), getattr(layer, SUPPORT)

    @torch.no_grad()
    def on_fit_start(self, ctx: MethodContext) -> None:
        max_epochs = ctx.max_epochs or 0
        if self.masked_retrain_epochs >= max(max_epochs, 1):
            raise ConfigError(
                f"method.masked_retrain_epochs={self.masked_retrain_epochs} leaves no ADMM epoch out of "
                f"train.epochs={max_epochs}; make it smaller than train.epochs (0 = off)"
            )
        if self.admm_iterations:  # spread evenly over the ADMM epochs: the last one lands at (or just before) their end
            steps = ctx.total_steps
            admm_steps = steps * (max_epochs - self.masked_retrain_epochs) // max(max_epochs, 1)
            self.iteration_every = max(1, admm_steps // self.admm_iterations)
        for layer in self.layers.values():
            for key in (Z, U):  # a true-bf16 trainer may have cast them; the ADMM state stays fp32
                if getattr(layer, key).dtype != torch.float32:
                    layer.register_buffer(key, getattr(layer, key).float(), persistent=True)
            z, u, support = self.state(layer)
            if not bool(support.any()):  # nothing loaded from a checkpoint: Z0 = Pi(W0), U0 = 0
                mask = layer_mask(layer, self.mask_of)
                z.copy_(layer.weight.float() * mask)
                u.zero_()
                support.copy_(mask)

    # -- sub-problem 1: the penalty -------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """(rho/2) * sum over target layers of ||W - Z + U||_F^2, in fp32; its gradient in W is rho * (W - Z + U)."""
        device = next(iter(self.layers.values())).weight.device
        with torch.autocast(device_type=device.type, enabled=False):
            terms = [_Penalty.apply(layer.weight, *self.state(layer)[:2], self.rho) for layer in self.layers.values()]
            return torch.stack(terms).sum()

    def training_loss(
        self, ctx: MethodContext, batch: dict[str, torch.Tensor], outputs: Any, loss: torch.Tensor,
    ) -> torch.Tensor:
        if self.phase != "admm":
            return loss
        penalty = self.penalty()
        ctx.log("train/admm_penalty", penalty.detach(), batch_size=batch["labels"].shape[0])
        return loss.float() + penalty

    # -- sub-problem 2 + dual update ------------------------------------------------------------------------------
    @torch.no_grad()
    def admm_iteration(self, ctx: MethodContext, step: int) -> dict[str, Any]:
        """Z <- Pi(W + U); U <- U + W - Z after `step` optimizer steps; record the mask similarity and the primal
        residual ||W - Z|| / ||W||."""
        kept = same = 0
        layer_similarity, residual_sq, weight_sq = [], 0.0, 0.0
        for layer in self.layers.values():
            z, u, support = self.state(layer)
            w = layer.weight.float()
            x = w + u
            mask = layer_mask(layer, self.mask_of, x)
            z.copy_(x * mask)
            u.add_(w - z)
            overlap, size = int((mask & support).sum()), int(mask.sum())
            kept, same = kept + size, same + overlap
            layer_similarity.append(overlap / size if size else 1.0)
            support.copy_(mask)
            residual_sq += float(((w - z) ** 2).sum())
            weight_sq += float((w ** 2).sum())
        entry = {
            "iteration": len(self.iterations) + 1,
            "step": int(step),
            "epoch": int(ctx.epoch),
            "similarity": same / kept if kept else 1.0,  # |M_k ∩ M_{k-1}| / |M_k| pooled over layers
            "similarity_layer_mean": sum(layer_similarity) / len(layer_similarity),
            "primal_residual": (residual_sq / weight_sq) ** 0.5 if weight_sq else 0.0,
        }
        self.iterations.append(entry)
        self._last_iteration_step = entry["step"]
        return entry

    def on_after_optimizer_step(self, ctx: MethodContext) -> None:
        if self.phase == "masked":
            mask_weights_(self.masked())
            return
        step = ctx.global_step + 1  # Lightning counts this step only after the hook returns
        if self.phase == "admm" and self.iteration_every != "epoch" and step % self.iteration_every == 0 \
                and step != self._last_iteration_step:
            self.admm_iteration(ctx, step)

    def on_train_epoch_end(self, ctx: MethodContext, epoch: int) -> None:
        if self.phase != "admm":
            return
        if self.iteration_every == "epoch" and ctx.global_step != self._last_iteration_step:
            self.admm_iteration(ctx, ctx.global_step)
        if self.masked_retrain_epochs and epoch == (ctx.max_epochs or 0) - self.masked_retrain_epochs - 1:
            self.hard_prune()
            self.phase = "masked"

    # -- masked phases --------------------------------------------------------------------------------------------
    def masked(self) -> list[tuple[nn.Module, torch.Tensor]]:
        return [(layer, getattr(layer, SUPPORT)) for layer in self.layers.values()]

    @torch.no_grad()
    def hard_prune(self) -> None:
        """W <- Pi(W) for good; SUPPORT becomes the final mask."""
        change_sq = weight_sq = 0.0
        for layer in self.layers.values():
            mask = layer_mask(layer, self.mask_of)
            w = layer.weight.float()
            change_sq += float((w * ~mask).pow(2).sum())
            weight_sq += float(w.pow(2).sum())
            layer.weight.mul_(mask)
            getattr(layer, SUPPORT).copy_(mask)
        self.final_prune_change = (change_sq / weight_sq) ** 0.5 if weight_sq else 0.0

    def on_before_optimizer_step(self, ctx: MethodContext, optimizer: torch.optim.Optimizer) -> None:
        if self.phase == "masked":
            mask_gradients_(self.masked())

    @torch.no_grad()
    def on_validation_start(self, ctx: MethodContext) -> None:
        if self.phase != "admm":
            return  # already exactly sparse
        for name, layer in self.layers.items():
            self._dense[name] = layer.weight.detach().clone()
            layer.weight.mul_(layer_mask(layer, self.mask_of))

    @torch.no_grad()
    def on_validation_end(self, ctx: MethodContext) -> None:
        for name, dense in self._dense.items():
            self.layers[name].weight.copy_(dense)
        self._dense = {}

    def on_fit_end(self, ctx: MethodContext) -> None:
        if self.phase == "admm":
            self.hard_prune()
        else:
            mask_weights_(self.masked())
        self.phase = "pruned"
        if self.save_model:
            save_sparse_model(ctx.model, sparse_model_folder(ctx.run_dir), [Z, U, SUPPORT])

    # -- record ---------------------------------------------------------------------------------------------------
    def report(self, ctx: MethodContext) -> dict[str, Any]:
        report = self.pattern_report(ctx)
        sims = [i["similarity"] for i in self.iterations]
        report["admm"] = {
            "rho": self.rho,
            "iteration_every": self.iteration_every,
            "admm_iterations": self.admm_iterations,
            "masked_retrain_epochs": self.masked_retrain_epochs,
            "init": "Z0 = Pi(W0), U0 = 0",
            "iterations": self.iterations,
            "mean_similarity": sum(sims) / len(sims) if sims else None,
            "final_prune_relative_change": self.final_prune_change,  # ||W - Pi(W)|| / ||W|| at the final hard prune
        }
        if self.save_model:
            report["saved_model"] = portable_path(sparse_model_folder(ctx.run_dir))
        return report


class NxMADMM(ADMMSparsity):
    """NxMTransformer: ADMM towards n:m (default 2:4, the paper's "4:2") along the input dim of each target weight."""

    name = "nxm"

    def __init__(self, rho: float, n: int = 2, m: int = 4, **kwargs: Any):
        check_nm(n, m)
        self.n, self.m = n, m
        super().__init__(rho, **kwargs)

    def mask_of(self, x: torch.Tensor) -> torch.Tensor:
        return nm_mask(x, self.n, self.m)

    def check_layers(self) -> None:
        check_divisible(self.layers, self.m)

    def pattern_report(self, ctx: MethodContext) -> dict[str, Any]:
        return sparsity_report(self.layers, self.n, self.m, model=ctx.model)


class UnstructuredADMM(ADMMSparsity):
    """ADMM_Unstructured: the same ADMM, projecting each layer onto its top `density` fraction of |values|."""

    name = "admm_unstructured"

    def __init__(self, rho: float, density: float = 0.5, **kwargs: Any):
        check_density(density)
        self.density = float(density)
        super().__init__(rho, **kwargs)

    def mask_of(self, x: torch.Tensor) -> torch.Tensor:
        return unstructured_mask(x, self.density)

    def pattern_report(self, ctx: MethodContext) -> dict[str, Any]:
        return sparsity_report(self.layers, density=self.density, model=ctx.model)

