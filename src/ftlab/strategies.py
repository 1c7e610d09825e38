"""Distributed strategies a trainer config names by `_target_` (conf/trainer/fsdp.yaml): built here because FSDP's
wrapping policy is Python (a function of the module), which YAML cannot spell."""
from __future__ import annotations

import functools
from typing import Iterable

from pytorch_lightning.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

from .errors import ConfigError

# the repeated transformer block of each backbone family ftlab configures: one FSDP unit each (the unit FSDP gathers
# before its forward and frees after), as the Hugging Face / Lightning FSDP guides wrap them
BLOCK_CLASSES = ("BertLayer", "RobertaLayer", "ElectraLayer", "DebertaV2Layer", "T5Block", "GPT2Block",
                 "LlamaDecoderLayer")
SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")


def is_block(module: nn.Module, names: Iterable[str] = BLOCK_CLASSES) -> bool:
    """Whether `module` is one of the backbones' repeated transformer blocks (matched by class name, so no model
    family has to be imported to build the policy)."""
    return type(module).__name__ in tuple(names)


def fsdp(sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = True, cpu_offload: bool = False,
         block_classes: list[str] | None = None) -> FSDPStrategy:
    """Lightning's FSDPStrategy wrapping every transformer block as one unit; `activation_checkpointing` recomputes
    each block's activations in backward (memory for T5-3B-sized models), `cpu_offload` keeps sharded parameters on
    the CPU between uses."""
    if sharding_strategy not in SHARDING:
        raise ConfigError(f"trainer.strategy.sharding_strategy={sharding_strategy!r} is not one of {list(SHARDING)}")
    names = tuple(block_classes or BLOCK_CLASSES)
    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=functools.partial(is_block, names=names))
    return FSDPStrategy(
        auto_wrap_policy=policy, sharding_strategy=sharding_strategy, cpu_offload=cpu_offload,
        activation_checkpointing_policy=policy if activation_checkpointing else None,
    )
