"""One process per run identity: an OS file lock (flock through `filelock`) held for the whole run.

The kernel drops the lock when its holder dies, kill -9 included, so a record left `running` with no lock holder is
known to be interrupted (ftlab.records.state_of). The holder's pid lives in a separate `.owner` file: `filelock`
truncates the lock file itself whenever a contender opens it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from .errors import FtlabError


class RunLocked(FtlabError):
    """Another process is running the same configuration."""

    def __init__(self, name: str, owner: dict[str, Any] | None, lock_path: Path):
        who = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}" if owner else "another process"
        super().__init__(f"skipping {name}: it is already running ({who}; lock {lock_path})")
        self.owner = owner


def lock_paths(record_path: Path) -> tuple[Path, Path]:
    """(lock file, owner file) of the run whose record is `record_path`: beside the records, in `.locks/`."""
    folder = Path(record_path).parent / ".locks"
    return folder / f"{Path(record_path).stem}.lock", folder / f"{Path(record_path).stem}.owner"


class RunLock:
    """`with RunLock(record_path):` — raises RunLocked at once if another live process holds the run."""

    def __init__(self, record_path: Path):
        self.record_path = Path(record_path)
        self.lock_path, self.owner_path = lock_paths(self.record_path)
        self._lock: FileLock | None = None

    def __enter__(self) -> "RunLock":
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunLocked(self.record_path.stem, read_owner(self.owner_path), self.lock_path) from None
        self._lock = lock
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.owner_path.write_text(json.dumps(owner))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._lock is not None:
            self.owner_path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


def read_owner(owner_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(owner_path).read_text())
    except (OSError, ValueError):
        return None


def is_held(record_path: Path) -> bool:
    """Whether a live process holds the run's lock right now."""
    lock_path, _ = lock_paths(record_path)
    if not lock_path.exists():
        return False
    lock = FileLock(str(lock_path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False

