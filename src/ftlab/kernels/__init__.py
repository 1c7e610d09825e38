"""CPU kernels that keep a training step's math and make it cheaper: dropout masks from a fast generator
(kernels/dropout.py) and the BERT eager attention that uses them (kernels/attention.py)."""
from __future__ import annotations

from typing import Any

from torch import nn

from .attention import use_fast_attention
from .dropout import use_fast_dropout


def use_cpu_kernels(model: nn.Module) -> dict[str, Any]:
    """Apply every kernel that fits `model` (a CPU run, after the method's setup); returns what was
    applied, for the run record."""
    return {"fast_dropout_modules": use_fast_dropout(model), "fast_attention_dropout": use_fast_attention(model)}
