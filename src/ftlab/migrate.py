"""Re-key committed run records to the current run identity: `python -m ftlab.migrate [records folder...]`.

Records made before the identity included the data (ftlab.data.fingerprint) carry a hash of the config alone; this
adds the fingerprint of the data their config reads (from `--data-dir`, the data they were run on) and renames each
file to its new name. Idempotent: a record already under its current name is left alone. Nothing else in a record
changes, so every table renders the same before and after.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from . import records
from .config import PROJECT_ROOT, run_identity
from .data.fingerprint import data_fingerprint
from .records import RunRecord


def rekey(record: RunRecord, data_dir: Path, cache_dir: Path | None) -> RunRecord:
    """The record with `data_files`, `config_hash` and `name` of the current identity."""
    config = record.config
    task, data = OmegaConf.create(record.task), OmegaConf.create(config.get("data") or {})
    data_files = record.data_files or data_fingerprint(task, data, data_dir, cache_dir)
    identity = run_identity(config, data_files)
    return RunRecord(record, data_files=data_files, config_hash=records.config_hash(identity),
                     name=records.record_name(identity))


def migrate_folder(folder: Path, data_dir: Path, cache_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """Re-key every record below `folder`; returns (old path, new path) of the files it renamed."""
    moved = []
    for path in sorted(Path(folder).rglob("*.json")):
        record = records.read(path)
        if record is None or not record.config:
            continue
        new = rekey(record, data_dir, cache_dir)
        target = path.with_name(f"{new.name}.json")
        if new == record and target == path:
            continue
        if target != path and target.exists():
            raise records.RecordError(f"cannot re-key {path}: {target} already exists")
        records.write_atomic(target, new) if target != path else _rewrite(path, new)
        if target != path:
            os.remove(path)
            moved.append((path, target))
    return moved


def _rewrite(path: Path, record: RunRecord) -> None:
    """Same name, new content (write_atomic refuses a different config_hash at the same path, rightly)."""
    os.remove(path)
    records.write_atomic(path, record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[PROJECT_ROOT / "results" / "records"])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FTLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")))
    args = parser.parse_args(argv)
    for folder in args.folders:
        for old, new in migrate_folder(folder, args.data_dir):
            print(json.dumps({"from": old.name, "to": new.name}))


if __name__ == "__main__":
    main()
