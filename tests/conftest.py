"""Shared fixtures: compose configs the way run.py does, and run tiny models end to end on real rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ftlab.config import CONF_DIR, PROJECT_ROOT, register_resolvers

DATA_DIR = Path(os.environ.get("FTLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")).resolve()
GLUE_AVAILABLE = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]  # tasks with train and dev staged in ../shared/data

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup fails at once instead of waiting on the network
os.environ.setdefault("WANDB_MODE", "offline")
register_resolvers()
torch.set_num_threads(min(2, os.cpu_count() or 1))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def tiny_overrides(tmp: Path, *extra: str) -> list[str]:
    """A seconds-long run: tiny random BERT, 48 real training rows, 32 dev rows, one epoch, no checkpoints."""
    return [
        "backbone=tiny-bert", f"paths.data_dir={DATA_DIR}", f"paths.records_dir={tmp}/records",
        f"paths.output_dir={tmp}/runs", f"paths.cache_dir={tmp.parent}/cache", "data.max_train_samples=48",
        "data.max_eval_samples=32", "train.epochs=1", "train.batch_size=16", "train.save_checkpoints=false",
        "trainer.enable_progress_bar=false", "logger=csv", *extra,
    ]


@pytest.fixture
def run_tiny(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """run_tiny("task=rte", "method=asp") -> the run record."""
    from ftlab.train import run

    def _run(*overrides: str) -> dict[str, Any]:
        return run(compose_config(tiny_overrides(tmp_path, *overrides)))

    return _run


@pytest.fixture
def one_thread():
    """One torch thread for files of many tiny ops: a second thread only adds synchronisation on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
