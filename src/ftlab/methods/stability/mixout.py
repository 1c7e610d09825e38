"""Mixout (Lee, Cho & Kang, ICLR 2020): stochastically mix each Linear weight with its pretrained value.

Every selected nn.Linear becomes a `MixoutLinear` holding the same weight W and a frozen target T (a buffer named
`mixout_target`, saved in the state_dict): the pretrained weight for encoder and pooler layers, and for the new
classifier its random initialisation (there is no pretrained value; `MIX:example_huggingface.py`, `REV:run_glue.py`).
At each training forward one Bernoulli(1 − p) draw per *input column* decides, for every row at once, whether that
column keeps W or is replaced by T (neuron-wise masks, "all outgoing parameters of a neuron"; element-wise masks would be
mixconnect, a different variant); the affine correction keeps E[W̃] = W (see `mixing.py`). Evaluation uses W. The mask
is a `(in_features,)` boolean vector broadcast over rows, so no weight-sized mask is allocated per forward.

Gradient convention: the gradient handed to W is ∂L/∂W̃ ⊙ M, without the 1/(1 − p) factor autograd would add — the
official `mixout.py` backward. With AdamW this is almost fully absorbed by Adam's normalisation.

Dropout: every nn.Dropout of the backbone is set to 0, as the paper and the official example prescribe (mixout replaces
dropout; keeping both double-regularises). `zero_dropout: false` keeps the backbone's dropout.

p grid: {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8} in the DPS paper's comparison (DPS App. D); 0.1 in the
revisit-bert sample command with BERT-large (`REV:sample_commands/mixout.sh`, the default here); 0.9 in the official
examples (`MIX:example.py`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ...errors import ConfigError
from ..base import Method
from ..context import MethodContext
from ..layers import check_layers, replace_module, select_linears, set_dropout
from .mixing import linear_sharing, mix_weight


class MixoutLinear(nn.Linear):
    """nn.Linear whose training-time weight is mixout(W, T, p) with a fresh per-input-column mask each forward."""

    p: float

    @classmethod
    def wrap(cls, linear: nn.Linear, p: float) -> "MixoutLinear":
        layer = linear_sharing(cls, linear)
        layer.p = p
        layer.register_buffer("mixout_target", linear.weight.detach().clone())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return F.linear(x, self.weight, self.bias)
        keep = torch.rand(self.in_features, device=self.weight.device) >= self.p   # P(keep) = 1 − p
        return F.linear(x, mix_weight(self.weight, self.mixout_target, keep, self.p), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixout_p={self.p}"


class Mixout(Method):
    """Replace the selected Linear layers by MixoutLinear (target = their weights at setup) and zero the dropout."""

    name = "mixout"

    def __init__(self, p: float = 0.1, layers: str | Sequence[str] = "all_linear", zero_dropout: bool = True):
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"mixout: p={p} must be in [0, 1) (the probability of mixing in the target); grid 0.1–0.8")
        self.p = float(p)
        self.layers = check_layers(layers, "mixout")
        self.zero_dropout = bool(zero_dropout)
        self.wrapped: dict[str, MixoutLinear] = {}
        self.dropouts_zeroed = 0

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        for name, linear in select_linears(model, backbone, self.layers, "mixout").items():
            layer = MixoutLinear.wrap(linear, self.p)
            replace_module(model, name, layer)
            self.wrapped[name] = layer
        if self.zero_dropout:
            self.dropouts_zeroed = set_dropout(model, 0.0)

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        return {
            "p": self.p, "layers_wrapped": len(self.wrapped), "dropouts_zeroed": self.dropouts_zeroed,
            "target_parameters": sum(layer.mixout_target.numel() for layer in self.wrapped.values()),
        }
