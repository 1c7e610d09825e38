"""Re-init (Zhang et al., ICLR 2021, "Revisiting few-sample BERT fine-tuning"): before fine-tuning, re-initialise the
pooler and the top L transformer blocks, then fine-tune everything.

Re-initialisation follows `asappresearch/revisit-bert-finetuning` `run_glue.py` (`--reinit_pooler --reinit_layers L`):
Linear and Embedding weights ~ N(0, initializer_range²) (0.02 for BERT/MiniLM), Linear biases 0, LayerNorm weight 1
and bias 0; the pooler's dense weight ~ N(0, initializer_range²), bias 0. Order of the draws: pooler, then the top L
blocks bottom-up, each block in `modules()` order.

Written by hand because HF's `_init_weights` draws from the global RNG and knows no "top L blocks" selection: the
draws here come from a generator seeded with `seed` (default: the run seed), so the same seed re-initialises the same
weights whatever else consumed the global RNG before. Backbones without a pretrained pooler (`pooler: null`, e.g.
RoBERTa/ELECTRA heads that are randomly initialised anyway) skip the pooler step. Blocks are counted in the main
stack (`layers_path`) only.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import is_conv1d
from ...errors import BackboneError, ConfigError, require
from ..base import Method
from ..context import MethodContext

log = logging.getLogger("ftlab")


@torch.no_grad()
def _normal_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    # drawn on the CPU then copied, so the values do not depend on the device the model sits on
    tensor.copy_(torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, std, generator=generator))


@torch.no_grad()
def reinit_module(root: nn.Module, std: float, generator: torch.Generator) -> int:
    """Re-initialise every Linear/Conv1D/Embedding/LayerNorm under `root`; returns the number of parameters touched."""
    touched = 0
    for m in root.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)) or is_conv1d(m):
            _normal_(m.weight, std, generator)
            touched += m.weight.numel()
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
                touched += m.bias.numel()
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
                touched += m.weight.numel()
            if m.bias is not None:
                m.bias.zero_()
                touched += m.bias.numel()
    return touched


class Reinit(Method):
    """Re-initialise the pooler (optional) and the top `layers` transformer blocks; grid L in 1..7 (DPS App. D)."""

    name = "reinit"

    def __init__(self, layers: int = 1, reinit_pooler: bool = True, std: float | None = None, seed: int = 0):
        require(isinstance(layers, int) and layers >= 0,
                f"method.layers={layers!r} must be a whole number >= 0 (how many top blocks to re-initialise)")
        require(std is None or float(std) > 0, f"method.std={std} must be null (the model's initializer_range) or > 0")
        self.layers, self.reinit_pooler, self.std, self.seed = layers, bool(reinit_pooler), std, int(seed)
        self.reinitialised: list[str] = []
        self.parameters_touched = 0

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        blocks = _main_blocks(model, backbone)
        require(self.layers <= len(blocks),
                f"method.layers={self.layers} but backbone '{backbone.name}' has only {len(blocks)} blocks; "
                f"choose method.layers between 0 and {len(blocks)}")
        std = float(self.std) if self.std is not None else _initializer_range(model)
        generator = torch.Generator().manual_seed(self.seed)
        targets: list[tuple[str, nn.Module]] = []
        if self.reinit_pooler:
            if backbone.get("pooler"):
                try:
                    targets.append((backbone.pooler, model.get_submodule(backbone.pooler)))
                except AttributeError:
                    raise BackboneError(f"backbone '{backbone.name}': pooler {backbone.pooler!r} not found in "
                                        f"{type(model).__name__}; fix the backbone config") from None
            else:
                log.info("Re-init: backbone '%s' has no pretrained pooler; only blocks are re-initialised", backbone.name)
        first = len(blocks) - self.layers
        targets += [(f"{backbone.layers_path}.{i}", blocks[i]) for i in range(first, len(blocks))]
        for name, target in targets:
            self.parameters_touched += reinit_module(target, std, generator)
            self.reinitialised.append(name)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {"layers": self.layers, "reinit_pooler": self.reinit_pooler, "seed": self.seed,
                "reinitialised": self.reinitialised, "parameters_reinitialised": self.parameters_touched}


def _main_blocks(model: nn.Module, backbone: DictConfig) -> list[nn.Module]:
    # the main stack only: "top L blocks" of an encoder-decoder's extra (decoder) stack is not what the paper means
    try:
        return list(model.get_submodule(backbone.layers_path))
    except AttributeError:
        raise BackboneError(f"backbone '{backbone.name}': layers_path {backbone.layers_path!r} not found in "
                            f"{type(model).__name__}; fix the backbone config") from None


def _initializer_range(model: nn.Module) -> float:
    value = getattr(getattr(model, "config", None), "initializer_range", None)
    if value is None:
        raise ConfigError(f"{type(model).__name__} has no config.initializer_range; set method.std (e.g. 0.02)")
    return float(value)
