"""DPS — Dynamic Parameter Selection (Zhang et al., NeurIPS 2022), variants Dense and Mix.

Rebuilt from the official code (`DPS@b8e41a83`, docs/methods/stability.md#dps), with its step bookkeeping moved out of forward():

* **Layers.** Every nn.Linear of the model by default — for BERT-style encoders the six linears of every block, the
  pooler and the classifier, as the official modelling file (`layers` can name roles instead, see `methods/layers.py`).
  Selection is per weight matrix; biases, embeddings and LayerNorms are always updated densely.
* **Phases.** U = int(total_steps · ur) optimizer steps per phase (total_steps = the Trainer's
  `estimated_stepping_batches`, i.e. max_steps when set). Optimizer steps s = 1, 2, … alternate
  accumulation (s in [1, U], [2U+1, 3U], …) and exploitation (s in [U+1, 2U], …). Steps are counted from
  `trainer.global_step`, never from forward calls, so gradient accumulation, a second forward per step (R3F, R-Drop)
  or an evaluation forward cannot shift the schedule (the official per-layer forward counter could).
* **Accumulation phase.** Dense update of everything; per matrix GAM += (∂L/∂W)² / ε (ε = 1e3), reset at the first
  step of each accumulation phase. GAM takes the *unscaled* gradient once per optimizer step, in
  `on_before_optimizer_step`, and skips steps whose gradients are not finite (AMP overflow).
* **Exploitation phase.** At its first step each matrix selects the top k = ⌈(1 − p)·n⌉ entries of its importance
  (exactly k: ties are broken by `torch.topk`, where the official `>= threshold` may keep a few more); for the rest of
  the phase the gradient of W is multiplied by that 0/1 mask (no rescaling) before clipping and the optimizer step.
* **Mix variant.** Each selected Linear becomes a `DPSMixLinear`: in training its weight is W̃ = mix(W, T, M, p) with
  the official gradient ∂L/∂W̃ ⊙ M (`mixing.py`). Accumulation phase: T = the pretrained weight (for the classifier its
  random init), M one Bernoulli(1 − p) draw per input column, resampled once per *optimizer step* (the official code
  draws per forward, which is the same without gradient accumulation; per step keeps accumulated micro-batches and a
  second forward on one mask); FAM += M. Exploitation phase: T = a snapshot of W at the phase's first step, M = the
  selected entries. Importance = GAM / max(FAM, 1), times exp(−FAM/U) only if U ≥ 50. Since M is drawn per column, FAM
  is constant down each column and is stored as an `(in_features,)` vector (the official code keeps a full matrix).
  Evaluation uses W.

**What p means.** p is the *reserved* probability: the fraction of each matrix held back in an exploitation phase; the
updated subnetwork is the top ⌈(1 − p)·n⌉ entries (p = 0.3 updates 70 %). This is what the official code does and
matches Mixout's p (probability of falling back to the target). The official config field `subnetwork_size_prob`
suggests the opposite reading (p = fraction updated); docs/methods/stability.md#what-p-means: we follow the code.

**Dropout** (`dropout`): `official` = the run script's rule: every dropout set to 0, except DPS Dense with
total_steps ≥ 2000, which keeps the backbone's dropout (the script restores 0.1, BERT's value); `zero`; `keep`.

Not a strict freeze: under AdamW the momentum from the dense phase and decoupled weight decay still move unselected
weights during exploitation, as in the official code.

State (GAM, masks, FAM, targets, snapshots) lives in buffers of the wrapped layers, so it is saved in checkpoints and
never shared between runs; the schedule log and counters live on the method instance.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ...errors import ConfigError
from ..base import Method
from ..context import MethodContext
from ..layers import check_layers, replace_module, select_linears, set_dropout
from .mixing import linear_sharing, mix_weight

Phase = Literal["accumulate", "exploit"]
VARIANTS = ("dense", "mix")
DROPOUT_RULES = ("official", "zero", "keep")
OFFICIAL_DENSE_DROPOUT_STEPS = 2000   # DPS:script/run_trainer.py keeps dropout for Dense runs at least this long
IMPORTANCE_DECAY_MIN_PERIOD = 50      # DPS Mix multiplies by exp(−FAM/U) only when U >= 50 (DPSMix/grads_ops.py)
MASK_SEED_SALT = 0x5D95               # decorrelates the mask stream from the global stream seeded with the same seed


def phase_at(step: int, period: int) -> tuple[Phase, bool]:
    """(phase, is the first step of that phase) for 1-based optimizer step `step` and phase length `period`."""
    index = (step - 1) // period
    return ("accumulate" if index % 2 == 0 else "exploit"), (step - 1) % period == 0


def kept_count(numel: int, p: float) -> int:
    """⌈(1 − p)·n⌉ computed on the decimal p as written (0.7·10 is 7, not 8 as binary floating point would give)."""
    return math.ceil((1 - Fraction(repr(p))) * numel)


def top_k_mask(scores: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
    """Write into the boolean `out` a mask with True at exactly the k largest entries of `scores`."""
    out.zero_()
    out.view(-1)[torch.topk(scores.reshape(-1), k, sorted=False).indices] = True
    return out


class DPSMixLinear(nn.Linear):
    """nn.Linear whose training-time weight is mix(W, T, M, p); T and M are set by the DPS method once per step."""

    p: float
    exploiting: bool

    @classmethod
    def wrap(cls, linear: nn.Linear, p: float) -> "DPSMixLinear":
        layer = linear_sharing(cls, linear)
        layer.p, layer.exploiting = p, False
        weight = linear.weight.detach()
        layer.register_buffer("dps_pretrained", weight.clone())
        layer.register_buffer("dps_snapshot", weight.clone())
        layer.register_buffer("dps_column_keep", torch.ones(linear.in_features, dtype=torch.bool, device=weight.device))
        layer.register_buffer("dps_fam", torch.zeros(linear.in_features, dtype=torch.float32, device=weight.device))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)
        if self.exploiting:
            weight = mix_weight(self.weight, self.dps_snapshot, self.dps_keep, self.p)
        else:
            weight = mix_weight(self.weight, self.dps_pretrained, self.dps_column_keep, self.p)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dps_p={self.p}, exploiting={self.exploiting}"


class DPS(Method):
    """DPS Dense (`variant: dense`) or DPS Mix (`variant: mix`); see the module docstring for the exact rules."""

    name = "dps"
    tiny_runs = (("method.ur=0.5",),)  # a few steps: phases of one step (accumulate, then exploit)
    resume_attributes = None  # per-step selection statistics live on the instance

    def __init__(
        self,
        variant: str = "dense",
        p: float = 0.3,
        ur: float = 0.05,
        eps: float = 1e3,
        layers: str | Sequence[str] = "all_linear",
        dropout: str = "official",
    ):
        if variant not in VARIANTS:
            raise ConfigError(f"dps: variant={variant!r} is not valid; use method.variant=dense or method.variant=mix")
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(
                f"dps: p={p} must be in [0, 1): it is the fraction of each matrix held back in exploitation phases "
                f"(grid 0.1–0.5)"
            )
        if not 0.0 < float(ur) < 1.0:
            raise ConfigError(
                f"dps: ur={ur} must be in (0, 1): each phase lasts int(total_steps·ur) optimizer steps "
                f"(grid 0.05, 0.1, 0.2)"
            )
        if dropout not in DROPOUT_RULES:
            raise ConfigError(f"dps: dropout={dropout!r} is not valid; choose one of {list(DROPOUT_RULES)}")
        if not float(eps) > 0:
            raise ConfigError(f"dps: eps={eps} must be > 0 (GAM accumulates grad²/eps; the official value is 1000)")
        self.variant, self.p, self.ur, self.eps = variant, float(p), float(ur), float(eps)
        self.layers = check_layers(layers, "dps")
        self.dropout = dropout
        self.targets: dict[str, nn.Linear] = {}
        self.total_steps = 0
        self.period = 0
        self.dropout_applied: str | None = None
        self.phase_log: list[str] = []         # one letter per optimizer step: a(ccumulate) / e(xploit)
        self.selections = 0                   # exploitation phases started (one top-k per matrix each)
        self.skipped_nonfinite = 0            # accumulation steps whose gradients were not finite
        self._prepared_step = 0
        self._last_step = 0
        self._generator: torch.Generator | None = None

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, backbone: DictConfig | None) -> None:
        for name, linear in select_linears(model, backbone, self.layers, "dps").items():
            layer = DPSMixLinear.wrap(linear, self.p) if self.variant == "mix" else linear
            weight = linear.weight
            layer.register_buffer("dps_gam", torch.zeros_like(weight, dtype=torch.float32))
            layer.register_buffer("dps_keep", torch.ones_like(weight, dtype=torch.bool))
            if layer is not linear:
                replace_module(model, name, layer)
            self.targets[name] = layer

    def on_fit_start(self, ctx: MethodContext) -> None:
        self.total_steps = int(ctx.total_steps)
        self.period = int(self.total_steps * self.ur)   # the official int(max_steps · ur)
        if self.period < 1:
            raise ConfigError(
                f"dps: a phase would last int({self.total_steps} steps × ur={self.ur}) = {self.period} optimizer steps; "
                f"raise method.ur to at least {1 / max(self.total_steps, 1):.3g} or train for more steps"
            )
        if self.period >= self.total_steps:
            raise ConfigError(
                f"dps: the first accumulation phase ({self.period} steps) covers all {self.total_steps} steps, so no "
                f"parameter would ever be selected; lower method.ur or train for more steps"
            )
        self._apply_dropout(ctx.model)
        device = next(iter(self.targets.values())).weight.device
        # mask draws get their own generator, seeded from the run's seed without consuming the global stream: they
        # do not depend on how many dropout masks or extra forwards used that stream, and a DPS run sees the same data
        # order as a finetune run with the same seed
        self._generator = torch.Generator(device=device).manual_seed(torch.initial_seed() ^ MASK_SEED_SALT)
        self._prepare(int(ctx.global_step) + 1)

    def _apply_dropout(self, model: nn.Module) -> None:
        keep = self.dropout == "keep" or (
            self.dropout == "official" and self.variant == "dense" and self.total_steps >= OFFICIAL_DENSE_DROPOUT_STEPS
        )
        if keep:
            self.dropout_applied = "backbone default"
        else:
            set_dropout(model, 0.0)
            self.dropout_applied = "0"

    # -- per optimizer step ---------------------------------------------------------------------------------------
    def _prepare(self, step: int) -> None:
        """Set masks, targets and phase-start state for optimizer step `step` (before its first forward)."""
        if step > self.total_steps or step == self._prepared_step:
            return
        phase, first = phase_at(step, self.period)
        with torch.no_grad():
            for layer in self.targets.values():
                if phase == "accumulate":
                    if first:
                        layer.dps_gam.zero_()
                        if self.variant == "mix":
                            layer.dps_fam.zero_()
                    if self.variant == "mix":
                        layer.exploiting = False
                        draw = torch.rand(layer.in_features, device=layer.weight.device, generator=self._generator)
                        layer.dps_column_keep.copy_(draw >= self.p)
                elif first:
                    top_k_mask(self._importance(layer), kept_count(layer.weight.numel(), self.p), layer.dps_keep)
                    if self.variant == "mix":
                        layer.dps_snapshot.copy_(layer.weight)
                        layer.exploiting = True
        if phase == "exploit" and first:
            self.selections += 1
        self._prepared_step = step

    def _importance(self, layer: nn.Module) -> torch.Tensor:
        if self.variant == "dense":
            return layer.dps_gam
        importance = layer.dps_gam / layer.dps_fam.clamp(min=1.0)
        if self.period >= IMPORTANCE_DECAY_MIN_PERIOD:
            importance = importance * torch.exp(-layer.dps_fam / self.period)
        return importance

    def on_before_optimizer_step(self, ctx: MethodContext, optimizer: torch.optim.Optimizer) -> None:
        step = int(ctx.global_step) + 1
        self._prepare(step)   # no-op unless the step was not prepared (e.g. a restored global_step)
        phase, _ = phase_at(step, self.period)
        layers = [layer for layer in self.targets.values() if layer.weight.grad is not None]
        grads = [layer.weight.grad for layer in layers]
        with torch.no_grad():
            if phase == "accumulate":
                norms = torch._foreach_norm(grads) if grads else []
                if grads and not bool(torch.isfinite(torch.stack(norms)).all()):
                    self.skipped_nonfinite += 1
                elif grads:
                    # Mix: W.grad is already ∂L/∂W̃ ⊙ M, so this is the official (∂L/∂W̃)² ⊙ M / ε
                    torch._foreach_addcmul_([layer.dps_gam for layer in layers], grads, grads, value=1.0 / self.eps)
                    if self.variant == "mix":
                        for layer in layers:
                            layer.dps_fam.add_(layer.dps_column_keep)
            elif self.variant == "dense":
                for layer, grad in zip(layers, grads):
                    grad.mul_(layer.dps_keep)
            # Mix in exploitation: the mixing op already returned ∂L/∂W̃ ⊙ M
        self.phase_log.append(phase[0])
        self._last_step = step

    def on_after_optimizer_step(self, ctx: MethodContext) -> None:
        # counted from the step just handled, not from global_step (Lightning increments it after this hook)
        self._prepare(self._last_step + 1)

    # -- report ---------------------------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the buffers this method added (GAM, masks; Mix: FAM, pretrained copy, snapshot)."""
        names = ("dps_gam", "dps_keep", "dps_pretrained", "dps_snapshot", "dps_column_keep", "dps_fam")
        return sum(
            getattr(layer, n).numel() * getattr(layer, n).element_size()
            for layer in self.targets.values() for n in names if hasattr(layer, n)
        )

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        kept = sum(kept_count(layer.weight.numel(), self.p) for layer in self.targets.values())
        total = sum(layer.weight.numel() for layer in self.targets.values())
        return {
            "variant": self.variant, "p": self.p, "ur": self.ur, "total_steps": self.total_steps,
            "period": self.period, "matrices": len(self.targets), "selected_fraction": kept / total if total else None,
            "exploitation_phases": self.selections, "skipped_nonfinite": self.skipped_nonfinite,
            "dropout": self.dropout_applied, "state_bytes": self.state_bytes(), "schedule": "".join(self.phase_log),
        }
