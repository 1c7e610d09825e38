"""trainer=fsdp (issue 19): the config composes, passes validation, and builds Lightning's FSDPStrategy whose wrapping
policy makes each transformer block one FSDP unit; bad strategy keys fail before any model loads."""
from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning.strategies import FSDPStrategy
from torch import nn

from conftest import compose_config, tiny_overrides
from ftlab.backbones import load_model
from ftlab.errors import ConfigError
from ftlab.strategies import fsdp, is_block
from ftlab.validation import validate_run_config
from hydra.utils import instantiate


def test_fsdp_config_builds_a_strategy_that_wraps_each_block(tmp_path: Path) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, "trainer=fsdp", "backbone=tiny-t5"))
    validate_run_config(cfg)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    model = load_model(cfg.backbone, num_labels=2)
    blocks = [m for m in model.modules() if is_block(m)]
    assert len(blocks) == 4 and {type(b).__name__ for b in blocks} == {"T5Block"}  # 2 encoder + 2 decoder blocks
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy(module=blocks[0], recurse=False, nonwrapped_numel=0)
    assert not policy(module=model.get_submodule("transformer.shared"), recurse=False, nonwrapped_numel=0)
    assert strategy.sharding_strategy.name == "FULL_SHARD"


def test_bad_strategy_settings_are_config_errors(tmp_path: Path) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, "trainer=fsdp", "+trainer.strategy.shard=2"))
    with pytest.raises(ConfigError, match=r"trainer.strategy: ftlab.strategies.fsdp does not accept"):
        validate_run_config(cfg)
    with pytest.raises(ConfigError, match="sharding_strategy='HALF'"):
        fsdp(sharding_strategy="HALF")
    assert not is_block(nn.Linear(2, 2))
