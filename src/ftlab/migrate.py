"""Re-key run records to the current run identity: `python -m ftlab.migrate [records folder...]`.

The identity (ftlab.config.run_identity) has changed twice; each change re-keys a record once:
1. it gained the fingerprint of the data a run reads (ftlab.data.fingerprint): a record without `data_files` gets the
   fingerprint of the data its config reads (from `--data-dir`, the data it was run on);
2. reporting config left the run config: a stored config loses `table` (now conf/report/tables/<experiment>.yaml) and
   `task.paper` (now conf/report/papers/<paper>.yaml), and the identity became the run groups of
   ftlab.config.RUN_GROUPS with every `_target_` (a class path) dropped.
Each record gets the `config_hash` and `name` a launch of its config computes today and is renamed to `<name>.json`;
nothing else in it changes (metrics, `resumed`, ...), so every table renders the same before and after. Idempotent: a
record already current is left alone, and a second copy of a record already re-keyed is removed.

Each record is re-keyed under the run locks of its old and new names (ftlab.run_lock): a record whose run is live is
skipped and named (migrate again once it ends). The run's output folder (`--runs-dir`/<name>: best.ckpt, and the
resume.ckpt of an interrupted run, re-keyed so that a relaunch still resumes) follows the record. Run it on a copy of
other worktrees' records too: `cp <worktree>/results/records/<exp>/*.json results/records/<exp>/ && python -m
ftlab.migrate`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import OmegaConf

from . import records
from .checkpoints import RESUME_FILE, ResumeCheckpoint
from .config import PROJECT_ROOT, run_identity, without_reporting
from .data.fingerprint import data_fingerprint
from .records import RunRecord
from .run_lock import RunLock, RunLocked, lock_paths

log = logging.getLogger("ftlab")


def rekey(record: RunRecord, data_dir: Path, cache_dir: Path | None) -> RunRecord:
    """The record with the stored config, `data_files`, `config_hash` and `name` of the current identity."""
    config = without_reporting(record["config"])
    task, data = OmegaConf.create(config["task"]), OmegaConf.create(config.get("data") or {})
    data_files = record.get("data_files") or data_fingerprint(task, data, data_dir, cache_dir)
    identity = run_identity(config, data_files)
    return RunRecord(record, config=config, data_files=data_files, config_hash=records.config_hash(identity),
                     name=records.record_name(identity))


def migrate_folder(folder: Path, data_dir: Path, cache_dir: Path | None = None, runs_dir: Path | None = None,
                   skipped: list[Path] | None = None) -> list[tuple[Path, Path]]:
    """Re-key every record below `folder`; returns (old path, new path) of the files it renamed or removed as a
    duplicate. A record whose run is live is left as it is and appended to `skipped`."""
    moved = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = records.read(path)
        except records.CorruptRecordError as err:
            log.warning("skipping damaged record: %s", err)
            continue
        if record is None or "config" not in record:
            continue
        new = rekey(record, data_dir, cache_dir)
        target = path.with_name(f"{new.name}.json")
        if new == record and target == path:
            continue
        try:
            with _locked(path, target):
                _move(path, target, record, new, runs_dir)
        except RunLocked as err:
            log.warning("not re-keyed, its run is live: %s", err)
            if skipped is not None:
                skipped.append(path)
            continue
        if target != path:
            moved.append((path, target))
    return moved


@contextlib.contextmanager
def _locked(path: Path, target: Path) -> Iterator[None]:
    """Both names' run locks; the lock files (and `.locks/` folder) this creates are removed after: nothing is left
    behind in results/."""
    names = list(dict.fromkeys((path, target)))
    locks_dir = path.parent / ".locks"
    had_locks_dir = locks_dir.exists()
    created = [lock for lock in (lock_paths(name)[0] for name in names) if not lock.exists()]
    try:
        with contextlib.ExitStack() as stack:
            for name in names:
                stack.enter_context(RunLock(name))
            yield
    finally:
        for lock in created:
            lock.unlink(missing_ok=True)
        if not had_locks_dir:
            with contextlib.suppress(OSError):
                locks_dir.rmdir()


def _move(path: Path, target: Path, record: dict[str, Any], new: dict[str, Any], runs_dir: Path | None) -> None:
    if target == path:
        os.remove(path)  # same name, new content (write_atomic refuses a different config_hash at one path, rightly)
        records.write_atomic(path, new)
        return
    existing = records.read(target)
    if existing is not None:
        if existing != new:
            raise records.RecordError(f"cannot re-key {path}: {target} already holds another record of that run")
        os.remove(path)  # a second copy of a record already re-keyed
        return
    records.write_atomic(target, new)
    os.remove(path)
    if runs_dir is not None:
        _move_run_folder(Path(runs_dir), record, new)


def _move_run_folder(runs_dir: Path, record: dict[str, Any], new: dict[str, Any]) -> None:
    """outputs/runs/<old name> -> <new name> (best.ckpt for ftlab.predict); its resume checkpoint re-keyed."""
    old_dir, new_dir = runs_dir / str(record.get("name")), runs_dir / new["name"]
    if not old_dir.is_dir() or new_dir.exists():
        return
    old_dir.rename(new_dir)
    resume = new_dir / "checkpoints" / RESUME_FILE
    if resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        saved = (state.get("callbacks") or {}).get(ResumeCheckpoint.__qualname__)
        if saved is not None and saved.get("config_hash") == record.get("config_hash"):
            saved["config_hash"] = new["config_hash"]
            tmp = resume.with_name(f".{resume.name}.{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, resume)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[PROJECT_ROOT / "results" / "records"])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FTLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")))
    parser.add_argument("--runs-dir", type=Path, default=PROJECT_ROOT / "outputs" / "runs",
                        help="where the runs' output folders are (paths.output_dir)")
    args = parser.parse_args(argv)
    skipped: list[Path] = []
    for folder in args.folders:
        for old, new in migrate_folder(folder, args.data_dir, runs_dir=args.runs_dir, skipped=skipped):
            print(json.dumps({"from": old.name, "to": new.name}))
    if skipped:
        raise SystemExit(f"{len(skipped)} record(s) of live runs not re-keyed; run `python -m ftlab.migrate` again "
                         f"once they end: {', '.join(str(p) for p in skipped)}")


if __name__ == "__main__":
    main()
