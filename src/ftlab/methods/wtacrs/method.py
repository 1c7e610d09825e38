"""WTA-CRS (docs/methods/wtacrs.md): memory-efficient fine-tuning by a sampled weight gradient in chosen linears.

`method=wtacrs` swaps the block linears of `roles` for `WTACRSLinear` (exact forward and input gradient; the weight
gradient from k = clamp(int(budget · N), min_k, N) of the N token rows, chosen by winner-take-all column-row sampling),
so only k rows of each such layer's input are kept for backward. Default roles = the paper's "level 2" linears:
attention output, FFN in and FFN out. Q, K and V stay exact, as in the paper: in full precision they read one shared
input tensor, which stays saved as long as any of the three keeps it, so sampling them saves almost nothing while
adding variance (docs/methods/wtacrs.md#level-2). (Under autocast each of the three keeps its own low-precision cast of that input —
54 of MiniLM's 529 MiB at batch 32, benchmarks/wtacrs_memory.py — so there `roles=[q,k,v,attn_out,ffn1,ffn2]` would
save memory; the default stays the paper's.) The paper's level 2 also samples both attention matmuls
(`attention`): with `sample_attention` the product P·V gets a WTA-CRS gradient for V over query rows per
(example, head), so only k rows of the dropped-out attention map are saved; with `sample_scores` QKᵀ gets WTA-CRS
gradients for Q (from k key rows) and K (from k query rows), so only k rows of each are saved. Both default on, as in
the paper. The model then runs ftlab's eager attention function, registered with transformers (also on GPU, where
it replaces SDPA: flash kernels save no attention map at all, but their backward is not WTA-CRS).

`method=lora_wtacrs`: LoRA (r = 32, α = 32, dropout 0.1) on q, k, v, built from `ftlab.methods.adapters.LoRALayer`, with the
down-projection A computed by the sampled-gradient function (A needs the whole dropped-out input for its gradient;
B's input is r-dimensional). Everything but the adapters and the task head is frozen, so the other linears save no
input for a weight gradient anyway (the paper switches their sampling off too).

Per-step mechanics: `on_train_batch_start` hands `batch["idx"]` to the ‖∇Z‖ cache (cache: one bf16 norm per
(example, token position) per layer), each layer's backward writes its output-gradient row norms there, and the next
visit of an example samples with p ∝ ‖X_i‖·‖∇Z_i‖. Every run measures its first training step with
`torch.autograd.graph.saved_tensors_hooks` (ftlab.telemetry.saved_tensors, ftlab.telemetry.callbacks.SavedActivations); this
method names the replaced layers (`watched_modules`), receives the measurement (`on_saved_tensors`), and `report()`
gives their saved bytes and the whole forward's, the mean optimizer-step time, the cache size and the sampling
statistics.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import block_linears
from ...errors import ConfigError
from ..adapters import LoRALayer, freeze_for_adapters
from ...telemetry.saved_tensors import SavedTensors
from ..base import Method
from ..context import MethodContext
from ..layers import check_roles
from .attention import (ATTENTION_NAME, SAMPLER_ATTRIBUTE, SCORE_SAMPLERS_ATTRIBUTE, HeadRowSampler,
                        install_attention_function)
from .cache import NormCache
from .ops import RowSampler, WTACRSLinear, check_budget, sampled_linear

DEFAULT_ROLES = ("attn_out", "ffn1", "ffn2")
ATTENTION_NORMS = ("per_head", "pooled")


def _kept_fraction(samplers: Any) -> float | None:
    """Share of the attention operands' rows kept over all forwards of these samplers (None: none ran)."""
    rows = kept = 0
    for s in samplers:
        rows, kept = rows + s.stats["rows"], kept + s.stats["kept"]
    return kept / rows if rows else None


class SampledDownLoRALayer(LoRALayer):
    """`LoRALayer` (whole-output, no sparse part) whose A product has a WTA-CRS weight gradient while training.

    The LoRA dropout is applied inside the sampled function (same distribution as nn.Dropout): backward then keeps a
    bool mask plus the k sampled rows, where nn.Dropout + an exact A keep the float noise (CPU) and all N rows.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, roles: Sequence[str], sampler: RowSampler):
        super().__init__(base, r, alpha, dropout, roles=roles)
        self.sampler = sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        h = sampled_linear(x, self.lora_A, None, self.sampler, dropout=p)
        return self.base(x) + nn.functional.linear(h, self.lora_B) * self.scaling


class _WTACRSMethod(Method):
    """Shared by both variants: the cache, the batch indices, the saved-tensor measurement, timing and the report."""

    resume_attributes = None  # the per-example gradient-norm cache is not checkpointed (it can reach GBs)

    def __init__(self, budget: float = 0.3, min_k: int = 10, floor: float = 0.01, max_positions: int = 128,
                 max_cache_mb: float = 4096, sample_attention: bool = True, sample_scores: bool = True,
                 attention_norms: str = "per_head"):
        self.budget = check_budget(budget)
        if attention_norms not in ATTENTION_NORMS:
            raise ConfigError(f"{self.name}: attention_norms={attention_norms!r} is not one of {list(ATTENTION_NORMS)}: "
                              f"per_head caches one gradient norm per head (the official code), pooled one per token "
                              f"for all heads (1/heads of the attention cache)")
        self.attention_norms = attention_norms
        self.sample_attention, self.sample_scores = bool(sample_attention), bool(sample_scores)
        self.attention_samplers: dict[str, HeadRowSampler] = {}   # P·V, per attention module
        self.score_samplers: dict[str, tuple[HeadRowSampler, HeadRowSampler]] = {}  # QKᵀ (query rows, key rows)
        if not isinstance(min_k, int) or min_k < 1:
            raise ConfigError(f"{self.name}: min_k={min_k!r} must be a positive integer (the paper's minimal_k is 10)")
        if not 0.0 <= floor < 1.0:
            raise ConfigError(f"{self.name}: floor={floor} must be in [0, 1) (share of p ∝ ‖X‖ mixed in; 0.01 default)")
        self.min_k, self.floor = min_k, float(floor)
        self.cache = NormCache(max_positions, int(max_cache_mb * 2**20))
        self.samplers: dict[str, RowSampler] = {}
        self.watch: dict[str, nn.Module] = {}
        self._step_started: float | None = None
        self.step_seconds: list[float] = []
        self._saved: tuple[SavedTensors, dict[str, Any]] | None = None  # the first training step's saved activations

    def sampler(self, name: str) -> RowSampler:
        self.samplers[name] = RowSampler(self.budget, self.min_k, self.floor, self.cache, name)
        return self.samplers[name]

    def _sample_attention(self, model: nn.Module, backbone: DictConfig) -> None:
        """Give every attention module (the parent of a q projection) its P·V and/or QKᵀ samplers and switch the model
        to ftlab's attention function."""
        if not (self.sample_attention or self.sample_scores):
            return
        modules = {name.rsplit(".", 1)[0] for name in block_linears(model, backbone, ["q"])}
        if not modules:
            raise ConfigError(f"{self.name}: sample_attention/sample_scores need the backbone's q projections "
                              f"(block_linears role 'q'); none found in {backbone.name}; set "
                              f"method.sample_attention=false method.sample_scores=false")
        install_attention_function()
        for name in sorted(modules):
            pooled = self.attention_norms == "pooled"
            sampler = lambda tag: HeadRowSampler(self.budget, self.min_k, self.floor, self.cache, name, tag, pooled)  # noqa: E731
            if self.sample_attention:
                self.attention_samplers[name] = sampler("pv")
                setattr(model.get_submodule(name), SAMPLER_ATTRIBUTE, self.attention_samplers[name])
            if self.sample_scores:
                self.score_samplers[name] = (sampler("qk.q"), sampler("qk.k"))
                setattr(model.get_submodule(name), SCORE_SAMPLERS_ATTRIBUTE, self.score_samplers[name])
        model.set_attn_implementation(ATTENTION_NAME)

    def watched_modules(self) -> dict[str, nn.Module]:
        return self.watch  # the replaced layers: the record's sampled_layers_bytes

    def on_saved_tensors(self, saved: SavedTensors, measured_on: dict[str, Any]) -> None:
        self._saved = (saved, measured_on)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_fit_start(self, ctx: MethodContext) -> None:
        """Size the ‖∇Z‖ cache for the whole training set now, so an over-budget cache fails on the first step."""
        examples = ctx.train_examples()  # idx = row of the full split, also for subsets
        if examples is not None:
            self.cache.expect(examples)

    def on_train_batch_start(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> None:
        if "idx" not in batch:
            raise ConfigError(
                f"{self.name} keys its gradient-norm cache by dataset example index, but the training batch has no "
                f"'idx' (keys: {sorted(batch)}); train through the task's datamodule (its collator adds batch['idx']) "
                f"or add an 'idx' tensor of dataset indices to every batch"
            )
        self.cache.begin_batch(batch["idx"], batch.get("attention_mask"))
        if self._step_started is None:
            self._step_started = time.perf_counter()

    def on_after_optimizer_step(self, ctx: MethodContext) -> None:
        if self._step_started is not None:
            self.step_seconds.append(time.perf_counter() - self._step_started)
            self._step_started = None

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        stats = {k: sum(s.stats[k] for s in self.samplers.values()) for k in ("forwards", "rows", "kept", "deterministic", "draws")}
        timed = self.step_seconds[1:] or self.step_seconds  # the first step pays one-off allocations
        pv = _kept_fraction(self.attention_samplers.values())
        qk = _kept_fraction(s for pair in self.score_samplers.values() for s in pair)
        out: dict[str, Any] = {
            "budget": self.budget, "min_k": self.min_k, "floor": self.floor, "sampled_layers": len(self.samplers),
            "sample_attention": self.sample_attention, "sampled_attention_products": len(self.attention_samplers),
            "attention_kept_row_fraction": pv,
            "sample_scores": self.sample_scores, "sampled_score_products": len(self.score_samplers),
            "attention_norms": self.attention_norms,
            "score_kept_row_fraction": qk,
            "kept_row_fraction": stats["kept"] / stats["rows"] if stats["rows"] else None,
            "deterministic_share_of_kept": stats["deterministic"] / stats["kept"] if stats["kept"] else None,
            "step_seconds_mean": statistics.fmean(timed) if timed else None,
            "step_seconds_median": statistics.median(timed) if timed else None,
            "norm_cache": {"granularity": "token", "dtype": "bfloat16", "bytes": self.cache.nbytes(),
                           "examples": self.cache.examples(), "positions": self.cache.max_positions,
                           "layers": len(self.cache.tables)},
        }
        if self._saved is not None:  # the first training step's measurement (on_saved_tensors)
            saved, measured_on = self._saved
            out["saved_tensors"] = {
                "measured_on": measured_on,
                "sampled_layers_bytes": saved.watched_total,
                "sampled_layers_input_bytes_if_exact": sum(s.first_input_bytes or 0 for s in self.samplers.values()),
                "whole_forward_bytes": saved.total_bytes,
            }
        return out


class WTACRS(_WTACRSMethod):
    """Full fine-tuning with WTA-CRS weight gradients in the block linears of `roles` (default attn_out, ffn1, ffn2)."""

    name = "wtacrs"
    tiny_runs = ((), ("backbone=tiny-t5",))  # an encoder, and T5's encoder-decoder (the paper's backbone)

    def __init__(self, roles: Sequence[str] = DEFAULT_ROLES, **sampling: Any):
        """`sampling`: the budget and sampler settings of _WTACRSMethod."""
        super().__init__(**sampling)
        self.roles = check_roles(roles, self.name)

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        for name, layer in block_linears(model, backbone, self.roles).items():
            if not isinstance(layer, nn.Linear):
                raise ConfigError(f"wtacrs replaces nn.Linear layers; {name} is a {type(layer).__name__} "
                                  f"(GPT-2's Conv1D is not supported); choose other roles or another backbone")
            replacement = WTACRSLinear(layer, self.sampler(name))
            model.set_submodule(name, replacement)
            self.watch[name] = replacement
        self._sample_attention(model, backbone)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {"roles": self.roles, **super().report(ctx)}


class LoRAWTACRS(_WTACRSMethod):
    """LoRA on `lora_roles` (default q, k, v) with WTA-CRS weight gradients for the down-projections A."""

    name = "lora_wtacrs"

    def __init__(self, r: int = 32, alpha: float = 32, dropout: float = 0.1,
                 lora_roles: Sequence[str] = ("q", "k", "v"), **sampling: Any):
        """`sampling`: the budget and sampler settings of _WTACRSMethod."""
        super().__init__(**sampling)
        if not isinstance(r, int) or r < 1:
            raise ConfigError(f"lora_wtacrs: rank r={r!r} must be a positive integer (the paper uses 32)")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"lora_wtacrs: dropout={dropout} must be in [0, 1)")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.lora_roles = check_roles(lora_roles, self.name, key="lora_roles")

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        targets: dict[str, list[str]] = {}
        for role in self.lora_roles:
            for name in block_linears(model, backbone, [role]):
                targets.setdefault(name, []).append(role)
        for name, roles in targets.items():
            base = model.get_submodule(name)
            if len(roles) > 1 or not isinstance(base, nn.Linear):
                raise ConfigError(
                    f"lora_wtacrs adapts whole nn.Linear projections; {name} is a {type(base).__name__} serving roles "
                    f"{roles} (a fused projection such as GPT-2's c_attn); use method=lora for fused projections"
                )
            layer = SampledDownLoRALayer(base, self.r, self.alpha, self.dropout, roles, self.sampler(f"{name}.lora_A"))
            model.set_submodule(name, layer)
            self.watch[name] = layer
        freeze_for_adapters(model, backbone)
        self._sample_attention(model, backbone)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {"lora_roles": self.lora_roles, "r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                **super().report(ctx)}
