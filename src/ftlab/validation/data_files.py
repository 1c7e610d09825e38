"""validate_data_files: the split files a run will read exist and decode, checked before any model is loaded."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..tasks.classification.glue import check_local_split
from ..tasks.generation.readers import check_d2t_split


def splits_read(cfg: DictConfig) -> list[str]:
    """The splits a run reads: train, every eval split, every test split (generation tasks), in that order."""
    task = cfg.task
    return list(dict.fromkeys(["train", *task.eval_splits, *(task.get("test_splits") or [])]))


def validate_data_files(cfg: DictConfig) -> None:
    """Raise ftlab.errors.DataError naming the file (and line) if a split file the run will read is missing, is not
    valid UTF-8, lacks its header columns, or has no rows; ConfigError if the task names an unknown split or format.

    Cheap: a binary scan of each file plus its first lines (no parsing of every row, no tokenizer, no model); the
    readers report row-level problems with file:line when the data module loads. Hub data (data.source=hub) is not
    local and is skipped. Call it after validate_run_config (it trusts the task's keys)."""
    if cfg.data.source != "local":
        return
    data_dir = Path(cfg.paths.data_dir)
    check = check_d2t_split if cfg.task.kind == "generation" else check_local_split
    for split in splits_read(cfg):
        check(data_dir, cfg.task, split)
