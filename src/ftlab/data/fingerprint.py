"""What data a run read, as part of its identity: per split, the files' relative names, sizes and a content hash.

Pointing `paths.data_dir` at other data must not reuse a completed run of the same config, so the identity hashes the
content, not the path (records are committed and compared across machines). Hashing a 100 MB split on every launch
would cost seconds, so hashes are cached by (absolute path, size, mtime): a rerun reads no data to know its identity.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig

from ..errors import DataError


def run_splits(task: DictConfig) -> list[str]:
    """Every split a run of `task` reads: train, the dev splits and the test-only splits."""
    splits = ["train", *list(task.get("eval_splits") or []), *list(task.get("test_splits") or [])]
    return list(dict.fromkeys(splits))


def split_files(data_dir: Path, task: DictConfig, split: str) -> list[Path]:
    """The files of one split: a file, or every file below a folder (WebNLG's train/ holds one XML per size)."""
    target = Path(data_dir) / task.local.dir / task.splits[split].file
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file())
    return [target]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class HashCache:
    """{absolute path: [size, mtime_ns, sha]} in one JSON file, updated under a lock (parallel launches share it)."""

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / "data_fingerprints.json" if cache_dir else None

    def sha(self, file: Path) -> str:
        stat = file.stat()
        key, stamp = str(file.resolve()), [stat.st_size, stat.st_mtime_ns]
        if self.path is None:
            return _sha256(file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            table = self._load()
            if key in table and table[key][:2] == stamp:
                return table[key][2]
            sha = _sha256(file)
            table[key] = [*stamp, sha]
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, sort_keys=True))
            os.replace(tmp, self.path)
            return sha

    def _load(self) -> dict[str, list[Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent or damaged: a cache, rebuilt from the files
            return {}


def data_fingerprint(task: DictConfig, data: DictConfig, data_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    """{"source": ..., "splits": {split: [{"file", "bytes", "sha256"}, ...]}} for the splits a run reads.

    Hub data is named, not hashed (its content is the hub's release; no download before the run starts)."""
    if data.get("source", "local") == "hub":
        hub = task.get("hub") or {}
        return {"source": "hub", "splits": {s: f"{hub.get('path')}/{hub.get('name')}:{task.splits[s].get('hub')}"
                                            for s in run_splits(task)}}
    root, cache = Path(data_dir), HashCache(cache_dir)
    splits: dict[str, list[dict[str, Any]]] = {}
    for split in run_splits(task):
        entries = []
        for file in split_files(root, task, split):
            if not file.is_file():
                raise DataError(
                    f"data file not found: {file} (task {task.name}, split {split}). Set `paths.data_dir=...` or "
                    f"FTLAB_DATA_DIR so that <data_dir>/{task.local.dir}/{task.splits[split].file} exists"
                    + (", or use `data.source=hub`." if task.get("hub") else ".")
                )
            entries.append({"file": file.relative_to(root).as_posix(), "bytes": file.stat().st_size,
                            "sha256": cache.sha(file)})
        splits[split] = entries
    return {"source": "local", "splits": splits}
