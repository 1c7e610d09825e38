"""Run records: one JSON file per run, written atomically, named by the hash of the config that decides the result."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import FtlabError

STATUSES = ("running", "completed", "failed")


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_name(identity: dict[str, Any]) -> str:
    """Readable and unique: <task>-<method>-<backbone>-s<seed>-<hash>."""
    return "-".join([
        str(identity["task"]["name"]), str(identity["method"]["name"]), str(identity["backbone"]["name"]),
        f"s{identity['seed']}", config_hash(identity),
    ])


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read(path)
    if existing is not None and existing.get("config_hash") != record.get("config_hash"):
        raise FtlabError(f"refusing to overwrite {path}: it holds the record of a different config")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open() as handle:
        return json.load(handle)


def iter_records(folder: Path) -> Iterator[dict[str, Any]]:
    """Every record below `folder`, in a stable order."""
    for path in sorted(Path(folder).rglob("*.json")):
        record = read(path)
        if record is not None and "config_hash" in record:
            yield record
