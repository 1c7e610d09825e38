"""What a multirun leaves behind for its launcher: one line per job, a summary table at the end, a non-zero exit when
any job failed. Jobs may run in other processes (joblib, submitit), so each writes its outcome into the sweep folder
and the launcher's process reads them back (a Hydra callback: `hydra.callbacks.ftlab_summary`)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .records import best_score

log = logging.getLogger("ftlab")
OUTCOMES = ".ftlab_jobs"


def write_outcome(sweep_dir: str | Path, job: int | str, outcome: dict[str, Any]) -> None:
    folder = Path(sweep_dir) / OUTCOMES
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{job}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"job": job, **outcome}, default=str))
    os.replace(tmp, folder / f"{job}.json")


def read_outcomes(sweep_dir: str | Path) -> list[dict[str, Any]]:
    folder = Path(sweep_dir) / OUTCOMES
    found = []
    for path in sorted(folder.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            found.append({"job": path.stem, "status": "unknown", "error": f"unreadable outcome file {path}"})
    return found


def record_outcome(record: dict[str, Any]) -> dict[str, Any]:
    """What the summary shows of a run record: status, name, its selection metric's best value, fit time."""
    selection = (record.get("metrics") or {}).get("selection") or {}
    metric = f"{selection['split']}/{selection['metric']}" if selection.get("split") else None
    seconds = (record.get("cost") or {}).get("fit_seconds")
    return {"status": record.get("status", "?"), "name": record.get("name"), "best": best_score(record),
            "metric": metric, **({"fit_seconds": seconds} if seconds is not None else {})}


def summary_lines(outcomes: list[dict[str, Any]]) -> list[str]:
    """One table: job, status, best value of the selection metric (and which), minutes, record name (or overrides)."""
    lines = [f"{'job':>4}  {'status':<11} {'metric':<16} {'best':>8}  {'min':>6}  run"]
    for o in outcomes:
        best = "—" if o.get("best") is None else f"{o['best']:.2f}"
        seconds = o.get("fit_seconds", o.get("seconds"))  # the record's fit time; the job's wall time without one
        minutes = "—" if seconds is None else f"{seconds / 60:.1f}"
        lines.append(f"{o['job']:>4}  {o.get('status', '?'):<11} {o.get('metric') or '—':<16} {best:>8}  {minutes:>6}  "
                     f"{o.get('name') or o.get('overrides', '')}")
    failed = [o for o in outcomes if o.get("status") in ("failed", "interrupted", "unknown")]
    for o in failed:
        lines.append(f"job {o['job']} {o.get('status')}: {o.get('error', '')} ({o.get('overrides', '')})")
    return lines


class SweepSummary(Callback):
    """Prints the jobs' table when the sweep ends; exits 1 when any job failed (after all of them ran)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcomes = read_outcomes(config.hydra.sweep.dir)
        for line in summary_lines(outcomes):
            log.info(line)
        failed = sum(o.get("status") in ("failed", "interrupted", "unknown") for o in outcomes)
        if failed:
            log.error("%d of %d jobs failed", failed, len(outcomes))
            raise SystemExit(1)
