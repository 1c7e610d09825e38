"""Readers for the official data-to-text formats: E2E CSV (`mr,ref`), WebNLG 2017 XML, DART JSON.

Each reader returns one row per (input, reference) pair, in file order:
`{"input": linearised structured input, "target": reference text or None, "where": "file:line-or-entry"}`.
A file without references (E2E `testset.csv`, WebNLG `testdata_no_lex.xml`) yields `target=None` on every row; the
data module refuses to train or evaluate on such rows with an error that names the file.
"""
from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError
from .linearize import linearize_e2e, linearize_triples, parse_e2e_mr

csv.field_size_limit(sys.maxsize)

D2TRow = dict[str, Any]


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(
            f"data file not found: {path}. Point ftlab at the folder holding e2e/, webnlg/ and dart/ with "
            f"`paths.data_dir=...` or FTLAB_DATA_DIR, or fix the split's `file` in the task config."
        )


def read_e2e_csv(path: Path, options: dict[str, Any] | None = None) -> list[D2TRow]:
    """E2E challenge CSV: header `mr,ref` (the reference-free test file has only `MR`)."""
    _require_file(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if "mr" not in header:
            raise DataError(f"{path}:1: no 'mr' column in the header {header}; expected the E2E CSV header 'mr,ref'")
        mr_col, ref_col = header.index("mr"), header.index("ref") if "ref" in header else None
        rows = []
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            where = f"{path}:{line_no}"
            if len(fields) != len(header):
                raise DataError(f"{where}: expected {len(header)} comma-separated fields, found {len(fields)}")
            try:
                text = linearize_e2e(parse_e2e_mr(fields[mr_col]))
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
            target = fields[ref_col].strip() if ref_col is not None else None
            rows.append({"input": text, "target": target, "where": where})
    return rows


def _xml_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.xml")) if path.is_dir() else [path]


def read_webnlg_xml(path: Path, options: dict[str, Any] | None = None) -> list[D2TRow]:
    """WebNLG 2017 XML (a file, or a folder of them such as train/ with its 1triples..7triples subfolders).

    Inputs are the `modifiedtripleset`; references are the `<lex>` texts whose `comment` is in
    `options.keep_comments` (LoRA keeps only "good"; null keeps all). An entry whose lexicalisations are all filtered
    out is skipped (the recipe's filter, not bad data); an entry with no `<lex>` at all yields one reference-free row.
    """
    _require_file(path)
    keep = (options or {}).get("keep_comments")
    rows = []
    for file in _xml_files(path):
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as err:
            raise DataError(f"{file}: not valid XML ({err})") from None
        for entry in root.iter("entry"):
            where = f"{file}:entry {entry.get('eid')} ({entry.get('category')})"
            mset = entry.find("modifiedtripleset")
            if mset is None or not mset.findall("mtriple"):
                raise DataError(f"{where}: no <modifiedtripleset>/<mtriple>; is this a WebNLG 2017 file?")
            triples = []
            for mtriple in mset.findall("mtriple"):
                parts = [p.strip() for p in (mtriple.text or "").split(" | ")]
                if len(parts) != 3:
                    raise DataError(f"{where}: malformed triple {mtriple.text!r}, expected 'subject | property | object'")
                triples.append(tuple(parts))
            text = linearize_triples(triples)
            lexes = entry.findall("lex")
            if not lexes:
                rows.append({"input": text, "target": None, "where": where})
                continue
            for lex in lexes:
                if keep is None or lex.get("comment") in keep:
                    rows.append({"input": text, "target": (lex.text or "").strip(), "where": f"{where} lex {lex.get('lid')}"})
    return rows


def read_dart_json(path: Path, options: dict[str, Any] | None = None) -> list[D2TRow]:
    """DART v1.1.1 JSON: a list of {tripleset: [[s, r, o], ...], annotations: [{text, source}, ...]}."""
    _require_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of DART records, found {type(data).__name__}")
    rows = []
    for i, record in enumerate(data):
        where = f"{path}:record {i}"
        try:
            triples = [tuple(t) for t in record["tripleset"]]
        except (KeyError, TypeError):
            raise DataError(f"{where}: no 'tripleset' list") from None
        if not triples or any(len(t) != 3 for t in triples):
            raise DataError(f"{where}: every triple must be [subject, relation, object], got {record.get('tripleset')}")
        text = linearize_triples(triples, lower_relation=True)
        annotations = record.get("annotations") or []
        if not annotations:
            rows.append({"input": text, "target": None, "where": where})
        for j, annotation in enumerate(annotations):
            rows.append({"input": text, "target": (annotation.get("text") or "").strip(), "where": f"{where} annotation {j}"})
    return rows


READERS: dict[str, Callable[[Path, dict[str, Any] | None], list[D2TRow]]] = {
    "e2e_csv": read_e2e_csv, "webnlg_xml": read_webnlg_xml, "dart_json": read_dart_json,
}


def read_d2t_split(data_dir: Path, task: Any, split: str) -> list[D2TRow]:
    """Rows of one split of a generation task (`task.format`, `task.local.dir`, `task.splits[split].file`)."""
    from ..errors import ConfigError

    if task.format not in READERS:
        raise ConfigError(f"task {task.name}: unknown data format {task.format!r}; choose one of {sorted(READERS)}")
    if split not in task.splits:
        raise ConfigError(f"task {task.name} has no split {split!r}; it defines {sorted(task.splits)}")
    options = dict(task.get("reader") or {})
    return READERS[task.format](Path(data_dir) / task.local.dir / task.splits[split].file, options)
