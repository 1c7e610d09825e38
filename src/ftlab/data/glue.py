"""Read GLUE-format TSV files (or the GLUE hub dataset) into rows of {text fields..., label}.

The TSVs are read with quoting off: GLUE sentences contain unbalanced double quotes (MRPC, SST-2), and a quote-aware
reader would silently merge rows.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..errors import DataError

csv.field_size_limit(sys.maxsize)

Row = dict[str, Any]


def _label(raw: str, task: DictConfig, where: str) -> float | int:
    if task.kind == "regression":
        try:
            return float(raw)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is not a number (task {task.name} is a regression task)") from None
    values = [str(v) for v in task.local.label_values]
    if raw not in values:
        raise DataError(f"{where}: label {raw!r} is not one of {values} (task {task.name})")
    return values.index(raw)


def read_glue_tsv(path: Path, task: DictConfig) -> list[Row]:
    """Rows of a local GLUE TSV file; raises DataError naming the file and line of any malformed row."""
    if not path.is_file():
        raise DataError(
            f"data file not found: {path}. Point ftlab at a GLUE-format folder with `paths.data_dir=...` or the "
            f"FTLAB_DATA_DIR environment variable (expected <data_dir>/{task.local.dir}/{path.name}), or use the hub "
            f"with `data.source=hub`."
        )
    columns = dict(task.local.columns)
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] | None = next(reader, None) if task.local.header else None
        if task.local.header and header is None:
            raise DataError(f"{path}: file is empty, expected a header line")
        index = {name: i for i, name in enumerate(header)} if header else {}
        width = len(header) if header else task.local.num_columns
        positions = {}
        for field, column in columns.items():
            if header is None:
                positions[field] = int(column)
            elif column not in index:
                raise DataError(f"{path}:1: header has no column {column!r} (found {header})")
            else:
                positions[field] = index[column]
        for line_no, fields in enumerate(reader, start=2 if header else 1):
            if not fields:
                continue
            where = f"{path}:{line_no}"
            if len(fields) != width:
                raise DataError(f"{where}: malformed row: expected {width} tab-separated fields, found {len(fields)}")
            row = {field: fields[pos] for field, pos in positions.items() if field != "label"}
            row["label"] = _label(fields[positions["label"]], task, where)
            rows.append(row)
    return rows


def read_local_split(data_dir: Path, task: DictConfig, split: str) -> list[Row]:
    folder = data_dir / task.local.dir
    if not folder.is_dir():
        raise DataError(
            f"data folder not found: {folder} (task {task.name}, split {split}). Set `paths.data_dir=/path/to/data` or "
            f"FTLAB_DATA_DIR so that <data_dir>/{task.local.dir}/ holds the GLUE TSVs, or use `data.source=hub`."
        )
    return read_glue_tsv(folder / task.splits[split].file, task)


def read_hub_split(task: DictConfig, split: str) -> list[Row]:
    """Rows from the Hugging Face hub (needs network access)."""
    from datasets import load_dataset

    try:
        data = load_dataset(task.hub.path, task.hub.name, split=task.splits[split].hub)
    except Exception as err:  # the hub raises many types; the user needs the same advice for each
        raise DataError(
            f"could not load {task.hub.path}/{task.hub.name} split {task.splits[split].hub} from the hub ({err}). "
            f"Offline? Use a local GLUE folder: `data.source=local paths.data_dir=...`."
        ) from err
    fields = list(task.text_fields)
    return [{**{f: ex[f] for f in fields}, "label": ex["label"]} for ex in data]
