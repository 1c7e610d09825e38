"""Where every run stands: `python -m ftlab.status [records folder ...]`.

Counts records by state and lists the ones needing attention: `interrupted` (stopped by a signal, or left `running` by a
process that no longer holds the run's lock: kill -9, power loss), `failed` (with the error) and damaged files. A
relaunch of the same config resumes an interrupted run and retries a failed one.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from . import records
from .config import PROJECT_ROOT


def folder_status(folder: Path) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    notes: list[str] = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = records.read(path)
        except records.CorruptRecordError as err:
            counts["damaged"] += 1
            notes.append(f"damaged      {err}")
            continue
        if record is None or record.config_hash is None:
            continue
        state = records.state_of(record, path)
        counts[state] += 1
        if state in ("interrupted", "failed"):
            notes.append(f"{state:<12} {path}: {record.error or 'no process holds its lock'}")
    return counts, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        default=[PROJECT_ROOT / "results" / "records", PROJECT_ROOT / "outputs" / "records"])
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            continue
        counts, notes = folder_status(folder)
        print(f"{folder}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        for note in notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
