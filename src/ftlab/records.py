"""Run records: one JSON file per run, named by the hash of what decides its result (config and data), written
atomically. A record's state changes only through this module: a reader never sees half a record, a damaged record is
moved aside (never silently replaced), and a write that fails names the file.

A record's `status`: running (a process holds the run's lock, or held it and died: see ftlab.run_lock.state_of) |
completed | failed | interrupted (stopped by SIGINT/SIGTERM, or found `running` with no holder; a relaunch resumes it)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import FtlabError

log = logging.getLogger("ftlab")


class RecordError(FtlabError):
    """A record cannot be read or written."""


class CorruptRecordError(RecordError):
    """A record file exists but is not a record (truncated, not JSON, not UTF-8)."""


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_name(identity: dict[str, Any]) -> str:
    """Readable and unique: <task>-<method>-<backbone>-s<seed>-<hash>."""
    return "-".join([
        str(identity["task"]["name"]), str(identity["method"]["name"]), str(identity["backbone"]["name"]),
        f"s{identity['seed']}", config_hash(identity),
    ])


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a reader never sees half a record
    and a crash leaves the previous version. Any OS error (disk full, read-only folder) is a RecordError naming `path`,
    and no temporary file is left behind."""
    path = Path(path)
    try:
        existing = read(path)
    except CorruptRecordError:
        existing = None  # the caller moved it aside or is replacing it on purpose
    if existing is not None and existing.get("config_hash") != record.get("config_hash"):
        raise RecordError(f"refusing to overwrite {path}: it holds the record of a different config")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise RecordError(f"could not write run record {path}: {err.strerror or err} (errno {err.errno})") from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def read(path: Path) -> dict[str, Any] | None:
    """The record at `path`, None if there is none; CorruptRecordError (naming the file) if it cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CorruptRecordError(f"{path}: not a valid run record ({type(err).__name__}: {err})") from err
    if not isinstance(record, dict):
        raise CorruptRecordError(f"{path}: not a valid run record (a JSON {type(record).__name__}, not an object)")
    return record


def move_aside(path: Path) -> Path:
    """Keep a damaged record under a name no reader picks up (`<name>.json.corrupt-<time>`) and return that name."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    return target


def iter_records(folder: Path, skipped: list[Path] | None = None) -> Iterator[dict[str, Any]]:
    """Every record below `folder`, in a stable order. A damaged file is skipped with a warning naming it (and
    appended to `skipped` when given), never a crash: one truncated file must not hide every other result."""
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = read(path)
        except CorruptRecordError as err:
            log.warning("skipping damaged record: %s", err)
            if skipped is not None:
                skipped.append(path)
            continue
        if record is not None and "config_hash" in record:
            yield record


def best_score(record: dict[str, Any], split: str | None = None, metric: str | None = None) -> float | None:
    """The record's best-on-dev score on `split`/`metric` (default: its selection split and metric)."""
    metrics = record.get("metrics") or {}
    selection = metrics.get("selection") or {}
    split, metric = split or selection.get("split"), metric or selection.get("metric")
    best = metrics.get("best") or {}
    return (best.get("metrics") or {}).get(split, {}).get(metric)
