"""Checkpoints a run keeps: one resume checkpoint (the full training state, replaced every epoch, deleted when the run
completes) and, on request, the best-on-dev weights. One file each, overwritten in place: no `-v1` pile-up.

The resume checkpoint is taken at the end of each training epoch, after the method's epoch-end hook (ADMM's dual
update runs there) and after validation: Lightning resumes such a checkpoint at the start of the next epoch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

RESUME_FILE = "resume.ckpt"


class ResumeCheckpoint(pl.callbacks.Checkpoint):
    """Full state (weights, optimizer, scheduler, loops, history, RNG) to `<dir>/resume.ckpt`, written atomically.

    A `Checkpoint` subclass: Lightning calls it after the LightningModule's own on_train_epoch_end."""

    def __init__(self, dirpath: Path, config_hash: str):
        self.path = Path(dirpath) / RESUME_FILE
        self.config_hash = config_hash

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # every rank calls save_checkpoint (under DDP it is a collective: a barrier, then rank 0 alone writes)
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"config_hash": self.config_hash}


def resume_point(path: Path, config_hash: str) -> dict[str, Any] | None:
    """{"checkpoint", "epoch", "step"} if `path` is a resume checkpoint of this run's config, else None."""
    if not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # a checkpoint cut short by the kill it is meant to survive: start over
        return None
    saved_for = (state.get("callbacks") or {}).get(ResumeCheckpoint.__qualname__, {}).get("config_hash")
    if saved_for != config_hash:
        return None
    return {"checkpoint": str(path), "epoch": int(state.get("epoch", -1)), "step": int(state.get("global_step", -1))}


def best_weights_callback(dirpath: Path, monitor: str) -> pl.callbacks.ModelCheckpoint:
    """Best-on-dev weights only (no optimizer state: a third of the size), one file, overwritten."""
    return pl.callbacks.ModelCheckpoint(
        dirpath=dirpath, monitor=monitor, mode="max", save_top_k=1, save_last=False, save_weights_only=True,
        filename="best", enable_version_counter=False, auto_insert_metric_name=False,
    )
