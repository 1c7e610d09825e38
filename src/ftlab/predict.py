"""Test-set predictions for the GLUE server: unlabeled test files predicted with a run's best-on-dev weights.

GLUE's test labels are hidden, so runs evaluate on dev; `predict.splits=[test]` (MNLI: `[test_matched,
test_mismatched, ax]`) adds, after training, the predictions of each unlabeled file to the record (`test_predictions`).
A completed run launched again with splits its record lacks is not retrained: its kept best checkpoint predicts them.
`python -m ftlab.submit` turns the records into the server's TSVs and zip. `predict` decides nothing about a run's
result (it is not one of ftlab.config.RUN_GROUPS).

Files: `<predict.dir or the task's GLUE folder>/<split>.tsv`; `ax` is `<data_dir>/glue/diagnostic/diagnostic.tsv` (or
`<predict.dir>/diagnostic.tsv`). A test file has a header: an `index` (QQP: `id`) column and the task's text columns
under the names its train file uses (CoLA, whose train file has none: `sentence`).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from .config import portable_path
from .errors import ConfigError, DataError
from .tasks.classification.datamodule import IndexedCollator
from .tasks.classification.metrics import predictions
from .tasks.classification.tokenize import tokenize_rows

log = logging.getLogger("ftlab")
FILES = {"test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv", "ax": "diagnostic.tsv"}
INDEX_COLUMNS = ("index", "id")


def requested(cfg: DictConfig) -> list[str]:
    return list((cfg.get("predict") or {}).get("splits") or [])


def split_file(cfg: DictConfig, split: str) -> Path:
    folder = (cfg.get("predict") or {}).get("dir")
    if folder:
        return Path(folder) / FILES.get(split, f"{split}.tsv")
    if split == "ax":
        return Path(cfg.paths.data_dir) / "glue" / "diagnostic" / "diagnostic.tsv"
    return Path(cfg.paths.data_dir) / cfg.task.local.dir / FILES.get(split, f"{split}.tsv")


def check(cfg: DictConfig) -> None:
    """Before any model loads: the requested splits are names of existing files of a classification/regression task."""
    splits = requested(cfg)
    if not splits:
        return
    if cfg.task.kind == "generation":
        raise ConfigError("predict.splits is for GLUE-style tasks; generation tasks decode test sets with task.test_splits")
    for split in splits:
        if not isinstance(split, str) or split in cfg.task.splits:
            raise ConfigError(f"predict.splits: {split!r} must name an unlabeled test file, not one of the task's "
                              f"labelled splits {list(cfg.task.splits)}")
        path = split_file(cfg, split)
        if not path.is_file():
            raise DataError(f"predict.splits: {split}: file not found: {path} (set predict.dir=/folder/with/{path.name})")


def _columns(cfg: DictConfig, header: list[str], path: Path) -> tuple[int, dict[str, int]]:
    index = next((header.index(c) for c in INDEX_COLUMNS if c in header), None)
    if index is None:
        raise DataError(f"{path}:1: a test file needs an index column ({' or '.join(INDEX_COLUMNS)}); found {header}")
    train_names = OmegaConf.to_container(cfg.task.local.columns) if cfg.task.local.get("header") else {}
    positions = {}
    for field in cfg.task.text_fields:
        for name in (train_names.get(field), field):
            if isinstance(name, str) and name in header:
                positions[field] = header.index(name)
                break
        else:
            raise DataError(f"{path}:1: no column for the text field {field!r} of task {cfg.task.name} (found {header})")
    return index, positions


def read_unlabeled(cfg: DictConfig, path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(index column values, rows with the text fields and a placeholder label) of a test file."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        lines = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        raise DataError(f"{path}: empty test file")
    header, body = lines[0], [fields for fields in lines[1:] if fields]
    index, positions = _columns(cfg, header, path)
    placeholder = 0.0 if cfg.task.kind == "regression" else 0
    indices, rows = [], []
    for line_no, fields in enumerate(body, start=2):
        if len(fields) != len(header):
            raise DataError(f"{path}:{line_no}: malformed row: expected {len(header)} tab-separated fields, "
                            f"found {len(fields)}")
        indices.append(fields[index])
        rows.append({**{field: fields[pos] for field, pos in positions.items()}, "label": placeholder})
    if not rows:
        raise DataError(f"{path}: no rows after the header line")
    return indices, rows


@torch.no_grad()
def predict_files(cfg: DictConfig, model: torch.nn.Module, tokenizer: Any, splits: list[str], weights: str) -> dict:
    """{split: {file, rows, index, predictions, weights}} for each requested split, in file order."""
    collate = IndexedCollator(tokenizer, cfg.data.pad_to_multiple_of)
    device = next(model.parameters()).device
    bf16 = "bf16" in str(cfg.trainer.precision)
    was_training = model.training
    model.eval()
    out = {}
    try:
        for split in splits:
            path = split_file(cfg, split)
            indices, rows = read_unlabeled(cfg, path)
            dataset = tokenize_rows(rows, tokenizer, list(cfg.task.text_fields), cfg.data.max_length, None)
            loader = DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False, collate_fn=collate)
            logits, order = [], []
            for batch in loader:
                order.append(batch.pop("idx"))
                batch.pop("labels")
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits.append(model(**batch).logits.float().cpu())
            ids = torch.cat(order).numpy()
            preds = predictions(torch.cat(logits).numpy(), cfg.task.kind)[np.argsort(ids)]
            out[split] = {"file": portable_path(path), "rows": len(rows), "index": indices, "weights": weights,
                          "predictions": [float(p) if cfg.task.kind == "regression" else int(p) for p in preds]}
            log.info("predicted %d rows of %s (%s) with the %s", len(rows), split, path, weights)
    finally:
        model.train(was_training)
    return out


def load_best(module: torch.nn.Module, checkpoint: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file (Lightning's format)
    module.load_state_dict(state["state_dict"])
