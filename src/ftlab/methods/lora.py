"""LoRA (Hu et al. 2021): a frozen weight W plus a trainable low-rank update, h = W x + (alpha/r) B A x.

Public API (other methods and backbones build on it; keep it stable):

    add_lora(model, backbone_cfg, roles=("q", "v"), r=8, alpha=16, dropout=0.0, num_sparse=0, init="kaiming")
        -> list[LoRALayer]          # wraps every block linear with one of `roles` in place, in model order
    lora_layers(model) -> list[LoRALayer]
    freeze_for_adapters(model, backbone_cfg) -> None   # trainable = adapter factors (+ S) and the backbone's `head`
    merge_lora(model) -> nn.Module  # W <- (W + dW) * mask, wrappers replaced by their (Linear / Conv1D) base layers
    LoRALayer.delta_weight() -> Tensor (out, in)       # dW = s (B A + P_Omega(S)) in nn.Linear layout

Roles are the backbone config's `block_linears` keys (q, k, v, attn_out, ffn1, ffn2). A module that several roles
name (GPT-2's fused `attn.c_attn` for q, k and v) is a fused projection: its output splits into equal parts in the
order the roles appear in `block_linears`, and only the parts of the requested roles get a low-rank update, like
loralib's `MergedLinear(enable_lora=[True, False, True], fan_in_fan_out=True)`. GPT-2's `Conv1D` stores its weight
(in, out); adapter factors are always kept in nn.Linear layout (A: r x in, B: out x r) and only merging transposes.
A role that lists several modules (Llama's ffn1: [mlp.gate_proj, mlp.up_proj]) adapts each of them whole.

Why our own layer and not PEFT (installed, 0.21): PEFT's LoRA adapts a target module's whole output, so the q and v
slices of GPT-2's fused c_attn alone cannot be targeted (PEFT dropped loralib's MergedLinear / enable_lora); and
DSEE needs on the very same slices a sparse residual S on a fixed index set, row-shrinking of B and S when attention
heads are removed, and a merge that keeps pruned weights at zero, none of which PEFT's layers provide. One small
layer (this file) serves both LoRA and DSEE; with num_sparse = 0 it is plain LoRA.

The sparse residual P_Omega(S) is stored as |Omega| values plus their (row, col) indices and applied with a gather +
index_add (out[..., row] += s * value * x[..., col]): numerically the dense S * 1_Omega matmul, with |Omega| trainable
numbers and no dense out x in tensor, gradient or optimizer state (the official DSEE code keeps five dense ones).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ..backbones import ROLES, block_linears, block_stacks
from ..errors import ConfigError
from .base import Method
from .context import MethodContext

INITS = ("kaiming", "gaussian")


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D: y = x W + b with W stored (in, out)."""
    return type(module).__name__ == "Conv1D"


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or Conv1D."""
    rows, cols = module.weight.shape
    return (cols, rows) if is_conv1d(module) else (rows, cols)


def as_linear_layout(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A weight-shaped tensor of `module` viewed in (out, in) layout (a transpose view for Conv1D)."""
    return weight.t() if is_conv1d(module) else weight


class LoRALayer(nn.Module):
    """A frozen Linear/Conv1D plus s * B_i A_i on chosen output slices, plus an optional sparse residual s * P_Omega(S).

    `slices` are (start, stop) output-row ranges of equal size (default: the whole output). Omega is filled later
    (DSEE's GreBsmo) through `set_omega`; until then the sparse part is zero and its values stay at 0.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        slices: Sequence[tuple[int, int]] | None = None,
        roles: Sequence[str] = (),
        num_sparse: int = 0,
        init: str = "kaiming",
    ):
        super().__init__()
        out_features, in_features = weight_shape(base)
        slices = [tuple(s) for s in (slices or [(0, out_features)])]
        sizes = {stop - start for start, stop in slices}
        if len(sizes) != 1:
            raise ConfigError(f"LoRA slices must have equal sizes, got {slices}")
        self.base = base
        self.slices = slices
        self.slice_size = sizes.pop()
        self.roles = tuple(roles)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        self.full_output = slices == [(0, out_features)]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        n = len(slices)
        self.lora_A = nn.Parameter(torch.empty(n * r, in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(n * self.slice_size, r, device=base.weight.device))
        if init == "kaiming":  # loralib / PEFT default
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        elif init == "gaussian":  # DSEE's code: A ~ N(0, 0.02^2)
            nn.init.normal_(self.lora_A, std=0.02)
        else:
            raise ConfigError(f"LoRA init={init!r} is not valid; choose one of {list(INITS)}")
        rows = torch.cat([torch.arange(start, stop) for start, stop in slices]).to(base.weight.device)
        self.register_buffer("lora_rows", rows, persistent=False)
        self.sparse_values = nn.Parameter(torch.zeros(num_sparse, device=base.weight.device))
        self.register_buffer("sparse_rows", torch.zeros(num_sparse, dtype=torch.long, device=base.weight.device))
        self.register_buffer("sparse_cols", torch.zeros(num_sparse, dtype=torch.long, device=base.weight.device))

    # HF code sometimes reads a projection's weight/bias (dtype, device, shape checks): forward them to the base layer
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def num_sparse(self) -> int:
        return self.sparse_values.numel()

    @property
    def out_features(self) -> int:
        return weight_shape(self.base)[0]

    @property
    def in_features(self) -> int:
        return weight_shape(self.base)[1]

    def extra_repr(self) -> str:
        return f"roles={self.roles}, r={self.r}, alpha={self.alpha}, slices={self.slices}, num_sparse={self.num_sparse}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = F.linear(self.dropout(x), self.lora_A)
        n = len(self.slices)
        if n == 1:
            delta = F.linear(h, self.lora_B)
        else:  # block-diagonal: slice i sees only its own r columns of h
            blocks = self.lora_B.view(n, self.slice_size, self.r)
            delta = torch.einsum("...nr,nsr->...ns", h.unflatten(-1, (n, self.r)), blocks)
            delta = delta.flatten(-2)
        delta = delta * self.scaling
        y = y + delta if self.full_output else y.index_add(-1, self.lora_rows, delta.to(y.dtype))
        if self.num_sparse:
            contrib = x.index_select(-1, self.sparse_cols) * (self.sparse_values * self.scaling)
            y = y.index_add(-1, self.sparse_rows, contrib.to(y.dtype))
        return y

    # -- the update as a matrix -------------------------------------------------------------------------------------
    def lowrank_delta(self) -> torch.Tensor:
        """B A placed into the adapted output rows, (out, in), without the scaling s."""
        out = torch.zeros(self.out_features, self.in_features, device=self.lora_A.device, dtype=self.lora_A.dtype)
        n = len(self.slices)
        blocks = torch.bmm(self.lora_B.view(n, self.slice_size, self.r), self.lora_A.view(n, self.r, -1))
        return out.index_copy(0, self.lora_rows, blocks.reshape(n * self.slice_size, -1))

    def sparse_delta(self) -> torch.Tensor:
        """P_Omega(S) as a dense (out, in) matrix, without the scaling s (duplicate indices add up, as in forward)."""
        out = torch.zeros(self.out_features, self.in_features, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return out.index_put((self.sparse_rows, self.sparse_cols), self.sparse_values, accumulate=True)

    def delta_weight(self) -> torch.Tensor:
        """dW = s (B A + P_Omega(S)), (out, in) nn.Linear layout."""
        return self.scaling * (self.lowrank_delta() + self.sparse_delta())

    def set_omega(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Fix the sparse index set (full-output row and column indices, |Omega| each); values are reset to 0."""
        if rows.numel() != self.num_sparse or cols.numel() != self.num_sparse:
            raise ConfigError(f"set_omega: got {rows.numel()} indices for a layer with num_sparse={self.num_sparse}")
        with torch.no_grad():
            self.sparse_rows.copy_(rows)
            self.sparse_cols.copy_(cols)
            self.sparse_values.zero_()

    # -- structured shrinking (attention-head removal) -------------------------------------------------------------
    def keep_outputs(self, index: torch.Tensor) -> None:
        """Keep output rows `index` (sorted): shrink W, b, B rows and drop/re-index the sparse entries of removed rows."""
        if not self.full_output:
            raise ConfigError("removing output rows of a fused projection (e.g. GPT-2 c_attn) is not supported")
        old_rows = self.out_features
        self.base = shrink_layer(self.base, index, "out")
        self.lora_B = nn.Parameter(self.lora_B.detach().index_select(0, index).clone(), self.lora_B.requires_grad)
        self.slices, self.slice_size = [(0, index.numel())], index.numel()
        self.lora_rows = torch.arange(index.numel(), device=index.device)
        self._keep_sparse(index, old_rows, axis=0)

    def keep_inputs(self, index: torch.Tensor) -> None:
        """Keep input columns `index` (sorted): shrink W, A columns and the sparse entries."""
        old_cols = self.in_features
        self.base = shrink_layer(self.base, index, "in")
        self.lora_A = nn.Parameter(self.lora_A.detach().index_select(1, index).clone(), self.lora_A.requires_grad)
        self._keep_sparse(index, old_cols, axis=1)

    def _keep_sparse(self, index: torch.Tensor, old_size: int, axis: int) -> None:
        """Drop the sparse entries whose row (axis 0) or column (axis 1) was removed; re-index the others."""
        if not self.num_sparse:
            return
        new_position = torch.full((old_size,), -1, dtype=torch.long, device=index.device)
        new_position[index] = torch.arange(index.numel(), device=index.device)
        coords = self.sparse_rows if axis == 0 else self.sparse_cols
        mapped = new_position[coords]
        keep = mapped >= 0
        rows, cols = self.sparse_rows[keep], self.sparse_cols[keep]
        if axis == 0:
            rows = mapped[keep]
        else:
            cols = mapped[keep]
        trainable = self.sparse_values.requires_grad
        values = self.sparse_values.detach()[keep].clone()
        self.sparse_values = nn.Parameter(values, requires_grad=trainable and values.numel() > 0)
        self.sparse_rows, self.sparse_cols = rows.clone(), cols.clone()


def shrink_layer(layer: nn.Module, index: torch.Tensor, axis: str) -> nn.Module:
    """A new frozen Linear/Conv1D keeping output rows (axis='out') or input columns (axis='in') `index`."""
    weight = as_linear_layout(layer.weight.detach(), layer)
    weight = weight.index_select(0 if axis == "out" else 1, index)
    bias = layer.bias
    if bias is not None and axis == "out":
        bias = bias.detach().index_select(0, index)
    out_features, in_features = weight.shape
    if is_conv1d(layer):
        new = type(layer)(out_features, in_features).to(weight.device, weight.dtype)
        new.weight.data = weight.t().contiguous()
    else:
        new = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        new.weight.data = weight.contiguous()
    if bias is not None:
        new.bias.data = bias.detach().clone()
    for p in new.parameters():
        p.requires_grad_(False)
    return new


# -- model surgery ---------------------------------------------------------------------------------------------------
def check_roles(roles: Sequence[str], backbone: DictConfig, method: str) -> list[str]:
    """The roles as a list, or a ConfigError that lists the roles this backbone defines."""
    roles = [roles] if isinstance(roles, str) else list(roles)
    defined = list(backbone.block_linears)
    unknown = [r for r in roles if r not in defined]
    if not roles or unknown:
        problem = f"unknown role(s) {unknown}" if unknown else "no roles given"
        raise ConfigError(
            f"{method}: {problem} for backbone '{backbone.name}'; it defines {defined} "
            f"(modules {dict(backbone.block_linears)}); e.g. method.roles=[q,v]"
        )
    return roles


def _modules_and_roles(backbone: DictConfig) -> dict[tuple[str, str], list[str]]:
    """(stack's layers_path, module suffix inside a block) -> the roles it serves, in block_linears order (several
    roles = fused), for every stack of blocks (an encoder-decoder's decoder has its own layout)."""
    served: dict[tuple[str, str], list[str]] = defaultdict(list)
    for layers_path, block_linears_of_stack in block_stacks(backbone):
        for role, names in block_linears_of_stack.items():
            for suffix in [names] if isinstance(names, str) else list(names):
                served[(layers_path, suffix)].append(role)
    return served


def add_lora(
    model: nn.Module,
    backbone: DictConfig,
    roles: Sequence[str] = ("q", "v"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    num_sparse: int = 0,
    init: str = "kaiming",
) -> list[LoRALayer]:
    """Wrap every block linear with one of `roles` in a LoRALayer (in place); returns the new layers in model order.

    `num_sparse` is |Omega| per adapted matrix (a fused projection adapted on two slices gets 2 x num_sparse).
    """
    roles = check_roles(roles, backbone, "lora")
    if init not in INITS:
        raise ConfigError(f"lora: init={init!r} is not valid; choose one of {list(INITS)}")
    if not (isinstance(r, int) and r >= 1):
        raise ConfigError(f"lora: rank r={r!r} must be a positive integer, e.g. method.r=8")
    if num_sparse < 0:
        raise ConfigError(f"num_sparse={num_sparse} must be >= 0")
    served = _modules_and_roles(backbone)
    targets: dict[str, list[str]] = {}  # full module name -> requested roles it serves
    for role in roles:
        for name in block_linears(model, backbone, [role]):
            targets.setdefault(name, []).append(role)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    layers = []
    for name, wanted in sorted(targets.items(), key=lambda kv: order[kv[0]]):
        base = model.get_submodule(name)
        if isinstance(base, LoRALayer):
            raise ConfigError(f"lora: {name} already carries a LoRA layer; add_lora was called twice")
        out_features, in_features = weight_shape(base)
        layers_path = next(path for path, _ in served if name.startswith(path + "."))
        suffix = name[len(layers_path) + 1:].split(".", 1)[1]  # "<layers_path>.<i>.<suffix>"
        module_roles = served[(layers_path, suffix)]
        part = out_features // len(module_roles)
        if part * len(module_roles) != out_features:
            raise ConfigError(
                f"lora: {name} serves roles {module_roles} but its {out_features} outputs do not split equally"
            )
        slices = [(j * part, (j + 1) * part) for j, role in enumerate(module_roles) if role in wanted]
        if r > min(part, in_features):
            raise ConfigError(
                f"lora: rank r={r} exceeds what {name} allows (its adapted matrix is {part} x {in_features}, so r <= "
                f"{min(part, in_features)}; r < {part * in_features // (part + in_features)} saves parameters); "
                f"lower method.r"
            )
        if num_sparse > part * in_features:
            raise ConfigError(
                f"num_sparse={num_sparse} (|Omega|) exceeds the {part} x {in_features} = {part * in_features} entries of "
                f"{name}; lower method.num_sparse (paper default 16)"
            )
        for p in base.parameters():
            p.requires_grad_(False)
        chosen = [role for role in module_roles if role in wanted]
        layer = LoRALayer(base, r, alpha, dropout, slices, chosen, num_sparse * len(slices), init)
        model.set_submodule(name, layer)
        layers.append(layer)
    return layers


def lora_layers(model: nn.Module) -> list[LoRALayer]:
    return [m for m in model.modules() if isinstance(m, LoRALayer)]


def head_modules(model: nn.Module, backbone: DictConfig) -> dict[str, nn.Module]:
    """The backbone's task head (`head` list: trained from scratch, so always trainable), by name."""
    found = {}
    for name in backbone.get("head") or []:
        try:
            found[name] = model.get_submodule(name)
        except AttributeError:
            top = sorted({n.split(".")[0] for n, _ in model.named_modules() if n})
            raise ConfigError(
                f"backbone '{backbone.name}': head module {name!r} not found in {type(model).__name__}; "
                f"top-level modules: {top}; fix the backbone's `head` list"
            ) from None
    return found


def freeze_for_adapters(model: nn.Module, backbone: DictConfig) -> None:
    """Trainable = LoRA factors, sparse values and the task head; every other parameter frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model):
        for p in (layer.lora_A, layer.lora_B, layer.sparse_values):
            p.requires_grad_(p.numel() > 0)  # plain LoRA keeps an empty sparse_values: not an optimizer parameter
    for module in head_modules(model, backbone).values():
        for p in module.parameters():
            p.requires_grad_(True)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, W <- (W + dW) * mask, and put the base layer back in its place.

    A pruning mask (`weight_mask` buffer on the base layer, DSEE) is re-applied after merging so pruned weights stay
    exactly zero; this changes the function by dW at the pruned positions (the adapters themselves were never masked).
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALayer):
            continue
        base = module.base
        delta = module.delta_weight().to(base.weight.dtype)
        base.weight.add_(delta.t() if is_conv1d(base) else delta)
        if hasattr(base, "weight_mask"):
            base.weight.mul_(base.weight_mask.to(base.weight.dtype))
        model.set_submodule(name, base)
    return model


def adapter_parameter_count(model: nn.Module) -> int:
    return sum(l.lora_A.numel() + l.lora_B.numel() + l.sparse_values.numel() for l in lora_layers(model))


# -- the method ------------------------------------------------------------------------------------------------------
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
        from ..efficiency import dense_reference

        self.backbone = backbone
        self.dense = dense_reference(model, backbone)
        add_lora(model, backbone, self.roles, self.r, self.alpha, self.dropout, 0, self.init)
        freeze_for_adapters(model, backbone)

    def on_fit_end(self, ctx: MethodContext) -> None:
        if self.merge_at_end:
            merge_lora(ctx.model)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        from ..efficiency import efficiency_report

        return {"roles": self.roles, "r": self.r, "alpha": self.alpha, "merged": self.merge_at_end,
                **efficiency_report(ctx.model, self.backbone, self.dense)}


__all__ = [
    "LoRA", "LoRALayer", "ROLES", "add_lora", "adapter_parameter_count", "freeze_for_adapters", "head_modules",
    "lora_layers", "merge_lora", "shrink_layer",
]
