"""Read GLUE-format TSV files (or the GLUE hub dataset) into rows of {text fields..., label}.

The TSVs are read with quoting off: GLUE sentences contain unbalanced double quotes (MRPC, SST-2), and a quote-aware
reader would silently merge rows. Every error names the file and line: undecodable bytes (ftlab.data.textfile), a
row of the wrong width, an unknown label, a field longer than MAX_FIELD_CHARS (refused: see textfile), an empty split.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig

from ...data.textfile import MAX_FIELD_CHARS, check_field_size, decode_error, require_utf8
from ...errors import DataError

csv.field_size_limit(sys.maxsize)  # the size bound is ours (MAX_FIELD_CHARS), with file:line in its message

Row = dict[str, Any]
Lines = Iterator[tuple[int, list[str]]]


def _label_parser(task: DictConfig) -> Callable[[str, str], float | int]:
    """raw label text, where -> label; built once per file (reading DictConfig nodes per row is slow)."""
    name = task.name
    if task.kind == "regression":
        def number(raw: str, where: str) -> float:
            try:
                return float(raw)
            except ValueError:
                raise DataError(f"{where}: label {raw!r} is not a number (task {name} is a regression task)") from None
        return number
    values = [str(v) for v in task.local.label_values]
    index = {v: i for i, v in enumerate(values)}

    def class_id(raw: str, where: str) -> int:
        if raw not in index:
            raise DataError(f"{where}: label {raw!r} is not one of {values} (task {name})")
        return index[raw]
    return class_id


def _tsv_lines(path: Path) -> Lines:
    """(line number, fields) of every line; decoding and csv errors become DataErrors naming file:line."""
    reader = None
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for fields in reader:
                yield reader.line_num, fields
    except UnicodeDecodeError as err:
        raise decode_error(path, err) from None
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num if reader else 1}: not a readable TSV line ({err})") from None


def _require_file(path: Path, task: DictConfig) -> None:
    if not path.is_file():
        raise DataError(
            f"data file not found: {path}. Point ftlab at a GLUE-format folder with `paths.data_dir=...` or the "
            f"FTLAB_DATA_DIR environment variable (expected <data_dir>/{task.local.dir}/{path.name}), or use the hub "
            f"with `data.source=hub`."
        )


def _layout(path: Path, lines: Lines, task: DictConfig) -> tuple[list[str] | None, dict[str, int], int]:
    """(header or None, field -> column position, expected number of columns), consuming the header line."""
    header: list[str] | None = None
    if task.local.header:
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: file is empty, expected a header line and at least one row")
        header = first[1]
    index = {name: i for i, name in enumerate(header)} if header else {}
    positions = {}
    for field, column in dict(task.local.columns).items():
        if header is None:
            positions[field] = int(column)
        elif column not in index:
            raise DataError(f"{path}:1: header has no column {column!r} (found {header})")
        else:
            positions[field] = index[column]
    return header, positions, len(header) if header else int(task.local.num_columns)


def _empty_split(path: Path, header: list[str] | None) -> DataError:
    what = "no data rows after the header line" if header else "no data rows (the file is empty)"
    return DataError(f"{path}: {what}; an empty split cannot be trained or evaluated on: restore the file's rows")


def read_glue_tsv(path: Path, task: DictConfig) -> list[Row]:
    """Rows of a local GLUE TSV file; raises DataError naming the file and line of any malformed row."""
    _require_file(path, task)
    lines = _tsv_lines(path)
    header, positions, width = _layout(path, lines, task)
    label = _label_parser(task)
    text_fields = [(field, pos) for field, pos in positions.items() if field != "label"]
    names = header or [f"column {i}" for i in range(width)]
    rows: list[Row] = []
    for line_no, fields in lines:
        if not fields:
            continue
        where = f"{path}:{line_no}"
        if len(fields) != width:
            raise DataError(f"{where}: malformed row: expected {width} tab-separated fields, found {len(fields)}")
        if max(map(len, fields)) > MAX_FIELD_CHARS:
            for name, value in zip(names, fields):
                check_field_size(where, name, value)
        row: Row = {field: fields[pos] for field, pos in text_fields}
        row["label"] = label(fields[positions["label"]], where)
        rows.append(row)
    if not rows:
        raise _empty_split(path, header)
    return rows


def _split_path(data_dir: Path, task: DictConfig, split: str) -> Path:
    folder = Path(data_dir) / task.local.dir
    path = folder / task.splits[split].file
    if not folder.is_dir():
        raise DataError(
            f"data file not found: {path} (its folder {folder} does not exist; task {task.name}, split {split}). Set "
            f"`paths.data_dir=/path/to/data` or FTLAB_DATA_DIR so that <data_dir>/{task.local.dir}/ holds the GLUE "
            f"TSVs, or use `data.source=hub`."
        )
    return path


def read_local_split(data_dir: Path, task: DictConfig, split: str) -> list[Row]:
    return read_glue_tsv(_split_path(data_dir, task, split), task)


def check_local_split(data_dir: Path, task: DictConfig, split: str) -> None:
    """Cheap up-front check of one split (before any model load): the file exists, decodes as UTF-8, has the
    configured header columns and at least one row. Row-level errors (width, labels, sizes) come from the reader."""
    path = _split_path(data_dir, task, split)
    _require_file(path, task)
    require_utf8(path)
    lines = _tsv_lines(path)
    header, _, _ = _layout(path, lines, task)
    has_rows = any(fields for _, fields in lines)  # stops at the first non-blank row
    lines.close()
    if not has_rows:
        raise _empty_split(path, header)


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
