"""Readers for the official data-to-text formats: E2E CSV (`mr,ref`), WebNLG 2017 XML, DART JSON.

Each reader returns one row per (input, reference) pair, in file order:
`{"input": linearised structured input, "target": reference text or None, "where": "file:line-or-entry"}`.
A file without references (E2E `testset.csv`, WebNLG `testdata_no_lex.xml`) yields `target=None` on every row; the
data module refuses to train or evaluate on such rows with an error that names the file.

Errors name the file and the line (CSV: the physical line a record starts on; a quoted E2E reference may span lines)
or, where a parser gives no line per element, the entry (WebNLG `entry <eid>`, DART `record <index>`): undecodable
bytes, malformed rows and triples, fields longer than MAX_FIELD_CHARS (refused, see ftlab.data.textfile), empty splits.
"""
from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

from ...data.textfile import check_field_size, decode_error, require_utf8, utf8_problem
from ...errors import ConfigError, DataError
from .linearize import linearize_e2e, linearize_triples, parse_e2e_mr

csv.field_size_limit(sys.maxsize)  # the size bound is ours (MAX_FIELD_CHARS), with file:line in its message

D2TRow = dict[str, Any]


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(
            f"data file not found: {path}. Point ftlab at the folder holding e2e/, webnlg/ and dart/ with "
            f"`paths.data_dir=...` or FTLAB_DATA_DIR, or fix the split's `file` in the task config."
        )


def _empty_split(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}; an empty split cannot be trained or evaluated on: restore the file's rows")


# -- E2E CSV --------------------------------------------------------------------------------------------------------
def _e2e_header(path: Path, reader: Any) -> list[str]:
    header = [h.strip().lower() for h in next(reader, [])]
    if "mr" not in header:
        raise DataError(f"{path}:1: no 'mr' column in the header {header}; expected the E2E CSV header 'mr,ref'")
    return header


def read_e2e_csv(path: Path, options: dict[str, Any] | None = None) -> list[D2TRow]:
    """E2E challenge CSV: header `mr,ref` (the reference-free test file has only `MR`)."""
    _require_file(path)
    rows: list[D2TRow] = []
    line_no = 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = _e2e_header(path, reader)
            line_no = reader.line_num
            mr_col, ref_col = header.index("mr"), header.index("ref") if "ref" in header else None
            for fields in reader:
                where = f"{path}:{line_no + 1}"  # the line the record starts on (a quoted field may span lines)
                line_no = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DataError(f"{where}: expected {len(header)} comma-separated fields, found {len(fields)}")
                for name, value in zip(header, fields):
                    check_field_size(where, name, value)
                try:
                    text = linearize_e2e(parse_e2e_mr(fields[mr_col]))
                except DataError as err:
                    raise DataError(f"{where}: {err}") from None
                target = fields[ref_col].strip() if ref_col is not None else None
                rows.append({"input": text, "target": target, "where": where})
    except UnicodeDecodeError as err:
        raise decode_error(path, err) from None
    except csv.Error as err:
        raise DataError(f"{path}:{line_no + 1}: not a readable CSV record ({err})") from None
    if not rows:
        raise _empty_split(path, "no rows after the header line")
    return rows


def _check_e2e_csv(path: Path) -> None:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        _e2e_header(path, reader)
        if not any(fields for fields in reader):
            raise _empty_split(path, "no rows after the header line")


# -- WebNLG XML -----------------------------------------------------------------------------------------------------
def _xml_files(path: Path) -> list[Path]:
    files = sorted(path.rglob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise _empty_split(path, "no *.xml file in this folder")
    return files


def _parse_xml(file: Path) -> ET.Element:
    try:
        return ET.parse(file).getroot()
    except ET.ParseError as err:
        # expat reports a bad byte as "not well-formed"; say what it is if the file is not UTF-8
        problem = utf8_problem(file)
        line = err.position[0] if getattr(err, "position", None) else "?"
        raise DataError(problem or f"{file}:{line}: not valid XML ({err})") from None


def _webnlg_triple(where: str, index: int, text: str | None) -> tuple[str, str, str]:
    parts = [p.strip() for p in (text or "").split(" | ")]
    if len(parts) != 3 or not all(parts):
        raise DataError(f"{where}: malformed triple {index + 1} {text!r}, expected 'subject | property | object'")
    for name, value in zip(("subject", "property", "object"), parts):
        check_field_size(f"{where} triple {index + 1}", name, value)
    return parts[0], parts[1], parts[2]


def read_webnlg_xml(path: Path, options: dict[str, Any] | None = None) -> list[D2TRow]:
    """WebNLG 2017 XML (a file, or a folder of them such as train/ with its 1triples..7triples subfolders).

    Inputs are the `modifiedtripleset`; references are the `<lex>` texts whose `comment` is in
    `options.keep_comments` (LoRA keeps only "good"; null keeps all). An entry whose lexicalisations are all filtered
    out is skipped (the recipe's filter, not bad data); an entry with no `<lex>` at all yields one reference-free row.
    """
    _require_file(path)
    keep = (options or {}).get("keep_comments")
    rows: list[D2TRow] = []
    entries = 0
    for file in _xml_files(path):
        for index, entry in enumerate(_parse_xml(file).iter("entry")):
            entries += 1
            where = f"{file}:entry {entry.get('eid', index + 1)} ({entry.get('category')})"
            mset = entry.find("modifiedtripleset")
            if mset is None or not mset.findall("mtriple"):
                raise DataError(f"{where}: no <modifiedtripleset>/<mtriple>; is this a WebNLG 2017 file?")
            triples = [_webnlg_triple(where, i, m.text) for i, m in enumerate(mset.findall("mtriple"))]
            text = linearize_triples(triples)
            lexes = entry.findall("lex")
            if not lexes:
                rows.append({"input": text, "target": None, "where": where})
                continue
            for lex in lexes:
                if keep is None or lex.get("comment") in keep:
                    lex_where = f"{where} lex {lex.get('lid')}"
                    target = (lex.text or "").strip()
                    check_field_size(lex_where, "lex", target)
                    rows.append({"input": text, "target": target, "where": lex_where})
    if not rows:
        raise _empty_split(path, "no <entry> elements" if not entries else
                           f"no lexicalisation of its {entries} entries is kept by reader.keep_comments={keep}")
    return rows


# -- DART JSON ------------------------------------------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise decode_error(path, err) from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None


def _dart_triples(where: str, record: Any) -> list[tuple[str, str, str]]:
    tripleset = record.get("tripleset") if isinstance(record, dict) else None
    if not isinstance(tripleset, list) or not tripleset:
        raise DataError(f"{where}: no 'tripleset' list of [subject, relation, object] triples")
    triples = []
    for i, triple in enumerate(tripleset):
        if not (isinstance(triple, list) and len(triple) == 3 and all(isinstance(x, str) for x in triple)):
            raise DataError(f"{where}: triple {i} must be [subject, relation, object] strings, got {triple!r}")
        for name, value in zip(("subject", "relation", "object"), triple):
            check_field_size(f"{where} triple {i}", name, value)
        triples.append((triple[0], triple[1], triple[2]))
    return triples


def read_dart_json(path: Path, options: dict[str, Any] | None = None) -> list[D2TRow]:
    """DART v1.1.1 JSON: a list of {tripleset: [[s, r, o], ...], annotations: [{text, source}, ...]}."""
    _require_file(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of DART records, found {type(data).__name__}")
    if not data:
        raise _empty_split(path, "the JSON list of records is empty")
    rows: list[D2TRow] = []
    for i, record in enumerate(data):
        where = f"{path}:record {i}"
        text = linearize_triples(_dart_triples(where, record), lower_relation=True)
        annotations = record.get("annotations") or []
        if not isinstance(annotations, list):
            raise DataError(f"{where}: 'annotations' must be a list of {{text, source}} objects, got {annotations!r}")
        if not annotations:
            rows.append({"input": text, "target": None, "where": where})
        for j, annotation in enumerate(annotations):
            ann_where = f"{where} annotation {j}"
            if not isinstance(annotation, dict) or not isinstance(annotation.get("text") or "", str):
                raise DataError(f"{ann_where}: expected an object with a 'text' string, got {annotation!r}")
            target = (annotation.get("text") or "").strip()
            check_field_size(ann_where, "text", target)
            rows.append({"input": text, "target": target, "where": ann_where})
    return rows


def _check_dart_json(path: Path) -> None:
    if path.stat().st_size == 0 or path.read_bytes().strip() in (b"", b"[]"):
        raise _empty_split(path, "the file holds no DART records")


READERS: dict[str, Callable[[Path, dict[str, Any] | None], list[D2TRow]]] = {
    "e2e_csv": read_e2e_csv, "webnlg_xml": read_webnlg_xml, "dart_json": read_dart_json,
}
# the cheap up-front check per format, after existence and UTF-8 (check_d2t_split)
_CHECKS: dict[str, Callable[[Path], None]] = {
    "e2e_csv": _check_e2e_csv, "webnlg_xml": lambda path: None, "dart_json": _check_dart_json,
}


def _split_path(data_dir: Path, task: Any, split: str) -> Path:
    if task.format not in READERS:
        raise ConfigError(f"task {task.name}: unknown data format {task.format!r}; choose one of {sorted(READERS)}")
    if split not in task.splits:
        raise ConfigError(f"task {task.name} has no split {split!r}; it defines {sorted(task.splits)}")
    return Path(data_dir) / task.local.dir / task.splits[split].file


def read_d2t_split(data_dir: Path, task: Any, split: str) -> list[D2TRow]:
    """Rows of one split of a generation task (`task.format`, `task.local.dir`, `task.splits[split].file`)."""
    path = _split_path(data_dir, task, split)
    options = dict(task.get("reader") or {})
    return READERS[task.format](path, options)


def check_d2t_split(data_dir: Path, task: Any, split: str) -> None:
    """Cheap up-front check of one split (before any model load): the file (or every *.xml below a WebNLG folder)
    exists and decodes as UTF-8, and a CSV has its header and a row. Parsing errors come from the reader."""
    path = _split_path(data_dir, task, split)
    _require_file(path)
    files = _xml_files(path) if task.format == "webnlg_xml" else [path]
    for file in files:
        require_utf8(file)
    _CHECKS[task.format](path)
