"""Remove whole attention heads from every block, physically shrinking the matrices (DSEE structured pruning).

Head h of a block owns output rows [h*d, (h+1)*d) of q, k and v and the same input columns of the attention-output
projection (d = head size). Removing it drops those rows/columns, and on LoRA/DSEE-adapted matrices the matching
rows of B and the sparse entries of S (A is kept, as the paper says). The result equals the unpruned model with those
heads masked (their attention-output columns zeroed). transformers 5 dropped `PreTrainedModel.prune_heads`, and
BERT-family attention infers the head count from the projection width (view(..., -1, head_size)), so shrinking the
four matrices is all a layer needs; `num_attention_heads` / `all_head_size` attributes are updated when present.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import as_out_in, block_layers, weight_shape
from ...errors import ConfigError
from ..adapters import LoRALayer, shrink_layer

ATTENTION_ROLES = ("q", "k", "v", "attn_out")


def head_geometry(model: nn.Module) -> tuple[int, int]:
    """(heads per layer, head size) from the model config."""
    config = model.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not heads or not hidden:
        raise ConfigError(f"{type(model).__name__}: cannot read the number of attention heads from its config")
    return heads, getattr(config, "head_dim", None) or hidden // heads


def attention_modules(block: nn.Module, backbone: DictConfig, index: int) -> dict[str, tuple[str, nn.Module]]:
    """role -> (suffix, module) of q, k, v, attn_out in one block; fused or grouped projections are refused."""
    names = {role: backbone.block_linears.get(role) for role in ATTENTION_ROLES}
    missing = [role for role, name in names.items() if not isinstance(name, str)]
    if missing or len(set(names.values())) != 4:
        raise ConfigError(
            f"structured (head) pruning needs separate q, k, v and attn_out projections; backbone '{backbone.name}' "
            f"maps them to {names}. Use unstructured pruning (method.prune=unstructured) for this backbone"
        )
    return {role: (name, block.get_submodule(name)) for role, name in names.items()}


def kept_rows(removed: list[int], heads: int, head_size: int, device: torch.device) -> torch.Tensor:
    keep = [h for h in range(heads) if h not in set(removed)]
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size, device=device) for h in keep])


def _shrink(block: nn.Module, suffix: str, module: nn.Module, index: torch.Tensor, axis: str) -> None:
    if isinstance(module, LoRALayer):
        (module.keep_outputs if axis == "out" else module.keep_inputs)(index)
    else:
        if hasattr(module, "weight_mask"):
            raise ConfigError("head removal after unstructured pruning is not supported; use one pruning mode")
        block.set_submodule(suffix, shrink_layer(module, index, axis))


@torch.no_grad()
def remove_heads(model: nn.Module, backbone: DictConfig, removed: dict[int, list[int]]) -> None:
    """Remove heads `removed[layer]` (head indices of the original numbering) from each listed layer, in place."""
    heads, head_size = head_geometry(model)
    for i, block in enumerate(block_layers(model, backbone)):
        drop = sorted(set(removed.get(i, [])))
        if not drop:
            continue
        if len(drop) >= heads or min(drop) < 0 or max(drop) >= heads:
            raise ConfigError(f"layer {i}: cannot remove heads {drop} of {heads}; keep at least one head")
        modules = attention_modules(block, backbone, i)
        q_out = weight_shape(modules["q"][1])[0]
        if q_out != heads * head_size or any(weight_shape(modules[r][1])[0] != q_out for r in ("k", "v")):
            raise ConfigError(
                f"layer {i}: q/k/v widths do not match {heads} heads x {head_size} (grouped-query attention or heads "
                f"already removed?); structured pruning supports multi-head attention with equal q, k, v widths"
            )
        index = kept_rows(drop, heads, head_size, modules["q"][1].weight.device)
        for role in ("q", "k", "v"):
            _shrink(block, modules[role][0], modules[role][1], index, "out")
        _shrink(block, modules["attn_out"][0], modules["attn_out"][1], index, "in")
        parent = block.get_submodule(modules["q"][0].rsplit(".", 1)[0]) if "." in modules["q"][0] else block
        if hasattr(parent, "num_attention_heads"):
            parent.num_attention_heads = heads - len(drop)
        if hasattr(parent, "all_head_size"):
            parent.all_head_size = (heads - len(drop)) * head_size


@torch.no_grad()
def head_scores(
    model: nn.Module, backbone: DictConfig, criterion: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(layers, heads) importance; the lowest are removed. DSEE: sum over a head's rows of |dW| of the adapted
    q/k/v (and its columns of an adapted attn_out); `merged` uses |W + dW| of the same matrices; `random` is uniform."""
    heads, head_size = head_geometry(model)
    blocks = block_layers(model, backbone)
    if criterion == "random":
        return torch.rand(len(blocks), heads, generator=generator)
    scores = torch.zeros(len(blocks), heads)
    adapted = 0
    for i, block in enumerate(blocks):
        for role, (_, module) in attention_modules(block, backbone, i).items():
            if not isinstance(module, LoRALayer):
                continue
            adapted += 1
            matrix = module.delta_weight()
            if criterion == "merged":
                matrix = matrix + as_out_in(module.base, module.base.weight).float()
            elif criterion != "delta":
                raise ConfigError(f"pruning criterion {criterion!r} is not valid; choose delta, merged or random")
            magnitude = matrix.abs().float()
            per_head = magnitude.sum(1) if role != "attn_out" else magnitude.sum(0)
            scores[i] += per_head.view(heads, head_size).sum(1).cpu()
    if not adapted:
        raise ConfigError(
            f"head scores by |dW| need an adapted attention matrix, but method.roles adapts none of {ATTENTION_ROLES}; "
            f"adapt q and v (method.roles=[q,v]) or use method.criterion=random"
        )
    return scores


def lowest_heads(scores: torch.Tensor, count: int) -> dict[int, list[int]]:
    """The `count` lowest-scoring heads of every layer."""
    return {i: sorted(torch.topk(row, count, largest=False).indices.tolist()) for i, row in enumerate(scores)}
