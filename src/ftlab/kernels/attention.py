"""BERT-family eager attention with ftlab's CPU dropout on the attention probabilities, registered with transformers
as ATTENTION_NAME. The stock eager function calls torch's dropout (kernels/dropout.py says why that is slow on CPU);
everything else here is transformers' `models/bert/modeling_bert.py: eager_attention_forward`, line for line."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .dropout import dropout as fast_dropout

ATTENTION_NAME = "ftlab_eager"
# encoders whose attention modules call the attention interface as BERT does (query, key, value, additive mask)
BERT_LIKE = ("bert", "roberta", "electra")


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = fast_dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, eager_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def use_fast_attention(model: nn.Module) -> bool:
    """Switch a BERT-family model on eager attention to ATTENTION_NAME; True when it did."""
    config = getattr(model, "config", None)
    if config is None or config.model_type not in BERT_LIKE or config._attn_implementation != "eager":
        return False
    register()
    model.set_attn_implementation(ATTENTION_NAME)
    return True
