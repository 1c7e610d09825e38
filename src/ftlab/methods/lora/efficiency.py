"""Parameter and inference-FLOPs accounting for adapter and pruning methods (LoRA, DSEE).

FLOPs follow the definition that reproduces DSEE's Table 6 exactly: multiply-accumulates per token of the block
linears (q, k, v, attention output, FFN1, FFN2, at their current shapes) plus the unmerged adapter branches
(r x in for A, slice x r for B, |Omega| for S); attention score/context products, embeddings, pooler and head are
left out. For BERT-base with r = 16 on q and v this gives LoRA 1.007x and, after removing 3/6/9 heads per layer
(B rows shrink, A kept), 0.923x / 0.839x / 0.754x, printed in the paper as 1.01x, 0.92x, 0.84x, 0.75x.
`flops_ratio` counts dense kernels (unstructured zeros cost the same); `nonzero_flops_ratio` counts only non-zero
weights, the ideal for a sparse kernel.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from ...backbones import block_linears, weight_shape
from ..adapters import LoRALayer, lora_layers

FLOPS_DEFINITION = (
    "per-token multiply-accumulates of the block linears (q,k,v,attn_out,ffn1,ffn2) at their current shapes plus "
    "unmerged adapter branches, relative to the dense pre-trained model; attention score/context products, "
    "embeddings, pooler and head excluded (this reproduces DSEE Table 6's 1.01x/0.92x/0.84x/0.75x for BERT-base)"
)


def _macs(module: nn.Module, nonzero: bool) -> int:
    base = module.base if isinstance(module, LoRALayer) else module
    out_features, in_features = weight_shape(base)
    total = int((base.weight != 0).sum()) if nonzero else out_features * in_features
    if isinstance(module, LoRALayer):
        total += module.lora_A.numel() + module.lora_B.numel() + module.num_sparse
    return total


def block_linear_macs(model: nn.Module, backbone: DictConfig, nonzero: bool = False) -> int:
    """Per-token multiply-accumulates of the block linears (see the module docstring)."""
    return sum(_macs(m, nonzero) for m in block_linears(model, backbone).values())


def block_linear_weights(model: nn.Module, backbone: DictConfig, nonzero: bool = False) -> int:
    """Weights (non-zero ones with `nonzero`) of the pre-trained block linears, adapters excluded."""
    total = 0
    for module in block_linears(model, backbone).values():
        weight = (module.base if isinstance(module, LoRALayer) else module).weight
        total += int((weight != 0).sum()) if nonzero else weight.numel()
    return total


def dense_reference(model: nn.Module, backbone: DictConfig) -> dict[str, int]:
    """Sizes of the untouched model that efficiency_report compares against (call before adding adapters)."""
    return {"params": sum(p.numel() for p in model.parameters()), "macs": block_linear_macs(model, backbone),
            "block_weights": block_linear_weights(model, backbone),
            "encoder_params": sum(p.numel() for _, p in encoder_parameters(model))}


def encoder_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The backbone without its task head: the papers' "trainable %" is of this part, because every method also
    trains the classifier (and the pooler feeding it)."""
    return [(n, p) for n, p in model.base_model.named_parameters() if not n.startswith("pooler.")]


def efficiency_report(model: nn.Module, backbone: DictConfig, dense: dict[str, float]) -> dict[str, Any]:
    """Trainable / non-zero parameter counts and FLOPs ratios against `dense` = dense_reference(model) taken before
    any adapter or pruning (in the method's setup)."""
    adapter_ids = {id(p) for layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B, layer.sparse_values)}
    params = list(model.parameters())
    weights = [p for p in params if id(p) not in adapter_ids]  # the model itself; adapters counted apart
    adapters = sum(p.numel() for p in params if id(p) in adapter_ids)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in weights)
    nonzero = sum(int((p != 0).sum()) for p in weights)
    encoder_trainable = sum(p.numel() for _, p in encoder_parameters(model) if p.requires_grad)
    return {
        "dense_params": int(dense["params"]),
        "trainable_params": trainable,
        "trainable_percent": 100.0 * trainable / dense["params"],
        "encoder_trainable_params": encoder_trainable,
        "encoder_trainable_percent": 100.0 * encoder_trainable / dense["encoder_params"],
        "adapter_params": adapters,
        "model_params": total,
        "model_nonzero_params": nonzero,
        "model_nonzero_percent": 100.0 * nonzero / dense["params"],
        # the paper's "total parameters" axis: non-zero pre-trained block-linear weights kept, adapters excluded
        "block_nonzero_percent": 100.0 * block_linear_weights(model, backbone, nonzero=True) / dense["block_weights"],
        "flops_ratio": block_linear_macs(model, backbone) / dense["macs"],
        "nonzero_flops_ratio": block_linear_macs(model, backbone, nonzero=True) / dense["macs"],
        "flops_definition": FLOPS_DEFINITION,
    }
