"""Run records: one JSON file per run, named by the hash of what decides its result (config and data), written
atomically. This module owns the record: its fields are read through `RunRecord` (status, selection metric, best score,
config) and built through it (`RunRecord.start`, `complete`, `end`, `metrics_section`), so no other module parses a
record by hand. A record's state changes only through this module: a reader never sees half a record, a damaged record
is moved aside (never silently replaced), and a write that fails names the file.

The JSON on disk is the record itself (`RunRecord` is a dict): its fields, with the part of ftlab that fills each,

    name, config_hash           the run's identity (record_name, config_hash; ftlab.config.run_identity)
    status                      running | completed | failed | interrupted (see `Status`)
    experiment, config          the experiment name and the resolved config minus machine paths
    data_files                  the fingerprint of the data it read (ftlab.data.fingerprint)
    started, finished, pid      when and by which process; `resumed` when it continued an interrupted run
    metrics                     selection {split, metric, rule}, history [{epoch, step, metrics}], best and last
                                epoch {epoch, step, metrics, predictions, correct} (`metrics_section`)
    method_report, parameters   the method's own facts (Method.report) and parameter counts
    cost, environment           telemetry (ftlab.telemetry.callbacks): time, throughput, peak memory, saved
                                activations; library versions, commit, device
    generation, test_predictions  what generation tasks decoded; predictions of unlabeled test files (ftlab.predict)
    error, traceback            why a failed or interrupted run stopped
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, NamedTuple, Sequence, TypedDict

from .errors import FtlabError
from .run_lock import is_held

log = logging.getLogger("ftlab")

# running: a process holds the run's lock (or held it and died: see state_of) | completed | failed |
# interrupted: stopped by SIGINT/SIGTERM (or found `running` with no holder); a relaunch resumes it
Status = Literal["running", "completed", "failed", "interrupted"]
SELECTION_RULE = "best epoch on dev"
EPOCH_FIELDS = ("epoch", "step", "metrics", "predictions", "correct")


class RecordError(FtlabError):
    """A record cannot be read or written."""


class CorruptRecordError(RecordError):
    """A record file exists but is not a record (truncated, not JSON, not UTF-8)."""


class Selection(NamedTuple):
    """The model-selection metric of a run: the best epoch is the one with the highest `metric` on `split`."""

    split: str
    metric: str

    def __str__(self) -> str:
        return f"{self.split}/{self.metric}"


class EpochResult(TypedDict):
    """metrics.best and metrics.last: one validated epoch (metrics.history keeps epoch, step and metrics alone)."""

    epoch: int
    step: int
    metrics: dict[str, dict[str, float]]       # split -> metric -> value
    predictions: dict[str, list[Any]]          # split -> per-example prediction, in dataset order
    correct: dict[str, list[int]]              # split -> per-example right (1) / wrong (0); classification only


def _section(key: str, doc: str) -> property:
    """A record section read as a dict ({} when the record has none)."""
    return property(lambda record: record.get(key) or {}, doc=doc)


class RunRecord(dict):
    """One run's record: the JSON object as stored (a dict, so the file round-trips unchanged) with typed access to
    what its fields mean. Readers use the properties and methods, never the nested keys."""

    # -- building (ftlab.train) -----------------------------------------------------------------------------------
    @classmethod
    def start(cls, name: str, config_hash: str, experiment: str | None, config: Mapping[str, Any],
              data_files: Mapping[str, Any], resumed: Mapping[str, Any] | None = None) -> RunRecord:
        """The record of a run that starts now in this process (status `running`). `config` is the resolved config:
        its machine paths (`paths`) are left out, since records are committed and must not carry one machine's
        folders."""
        return cls(
            name=name, config_hash=config_hash, status="running", pid=os.getpid(), experiment=experiment,
            config={k: v for k, v in config.items() if k != "paths"}, data_files=dict(data_files), started=_now(),
            **({"resumed": dict(resumed)} if resumed else {}),
        )

    def complete(self, result: Mapping[str, Any]) -> None:
        """The run finished: its results (metrics, method_report, parameters, cost, environment, finished, ...)."""
        self.update(result)
        self["status"] = "completed"

    def end(self, status: Status, error: str, traceback: str | None = None,
            history: Sequence[Mapping[str, Any]] = ()) -> None:
        """The run stopped (`failed` or `interrupted`): why, when, and the epochs it validated before (results too)."""
        if history:
            self["metrics"] = metrics_section(history, self.selection_of_config())
        self.update(status=status, error=error, **({"traceback": traceback} if traceback is not None else {}))
        self["finished"] = _now()

    # -- identity and state ---------------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def config_hash(self) -> str | None:
        """None: not a run record (any other JSON file under a records folder)."""
        return self.get("config_hash")

    @property
    def experiment(self) -> str | None:
        return self.get("experiment")

    @property
    def file(self) -> str:
        """Where the record lives under results/records/: <experiment>/<name>.json (run records are written so)."""
        return f"{self.experiment}/{self.name}.json"

    @property
    def status(self) -> str:
        """The status as written (`Status`); "unknown" for a record without one. See `state_of` for a `running`
        record whose process is gone."""
        return self.get("status", "unknown")

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def resumable(self) -> bool:
        """Running or interrupted: a relaunch of its config continues it (from its last resume checkpoint)."""
        return self.status in ("running", "interrupted")

    @property
    def error(self) -> str | None:
        return self.get("error")

    # -- config ---------------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the run ran with (no machine paths)."""
        return self.get("config") or {}

    @property
    def task(self) -> dict[str, Any]:
        return self.config.get("task") or {}

    @property
    def method(self) -> dict[str, Any]:
        return self.config.get("method") or {}

    @property
    def task_name(self) -> str | None:
        return self.task.get("name")

    @property
    def method_name(self) -> str | None:
        return self.method.get("name")

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def data_files(self) -> dict[str, Any] | None:
        return self.get("data_files")

    def selection_of_config(self) -> Selection:
        """The selection metric the config asks for (task.selection), before any epoch is scored."""
        selection = self.task["selection"]
        return Selection(selection["split"], selection["metric"])

    # -- scores ---------------------------------------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, Any]:
        return self.get("metrics") or {}

    @property
    def selection(self) -> Selection | None:
        """The split and metric the best epoch was chosen on; None before any epoch was scored."""
        selection = self.metrics.get("selection") or {}
        return Selection(selection["split"], selection["metric"]) if selection.get("split") else None

    @property
    def best(self) -> EpochResult | None:
        """The best-on-dev epoch (by the selection metric)."""
        return self.metrics.get("best")

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every validated epoch: {epoch, step, metrics}."""
        return self.metrics.get("history") or []

    def _split(self, split: str | None) -> str | None:
        if split:
            return split
        selection = self.selection
        return selection.split if selection else None

    def best_score(self, split: str | None = None, metric: str | None = None) -> float | None:
        """The best epoch's score on `split`/`metric` (default: the selection split and metric); None if it has none."""
        selection = self.selection
        metric = metric or (selection.metric if selection else None)
        return ((self.best or {}).get("metrics") or {}).get(self._split(split), {}).get(metric)

    def best_correct(self, split: str | None = None) -> list[int] | None:
        """The best epoch's per-example right/wrong on `split` (default: the selection split); None without one."""
        return ((self.best or {}).get("correct") or {}).get(self._split(split))

    def epoch_scores(self, split: str | None, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of `split`/`metric` (default split: the selection split) for every validated epoch that
        scored it."""
        key = self._split(split)
        scores = []
        for entry in self.history:
            value = (entry.get("metrics") or {}).get(key, {}).get(metric)
            if value is not None:
                scores.append((int(entry["epoch"]), value))
        return scores

    # -- other sections -------------------------------------------------------------------------------------------
    method_report = _section("method_report", "The method's own facts (Method.report).")
    cost = _section("cost", "Time, throughput, peak memory, saved activations (ftlab.telemetry.callbacks).")
    environment = _section("environment", "Library versions, commit, device, threads.")
    test_predictions = _section("test_predictions",
                                "Unlabeled split -> {index, predictions, rows, weights, ...} (ftlab.predict).")


def metrics_section(history: Sequence[Mapping[str, Any]], selection: Selection) -> dict[str, Any]:
    """The record's `metrics` from the validated epochs (ftlab.tasks.module.TaskModule.history): the selection rule, every epoch's
    metrics, and the best (by `selection`) and last epochs in full."""
    scored = [h for h in history if selection.split in h["metrics"]]
    best = max(scored, key=lambda h: h["metrics"][selection.split][selection.metric]) if scored else None
    last = history[-1] if history else None
    return {
        "selection": {"split": selection.split, "metric": selection.metric, "rule": SELECTION_RULE},
        "history": [{k: h[k] for k in ("epoch", "step", "metrics")} for h in history],
        "best": _epoch_result(best), "last": _epoch_result(last),
    }


def _epoch_result(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {k: entry[k] for k in EPOCH_FIELDS}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_name(identity: dict[str, Any]) -> str:
    """Readable and unique: <task>-<method>-<backbone>-s<seed>-<hash>."""
    return "-".join([
        str(identity["task"]["name"]), str(identity["method"]["name"]), str(identity["backbone"]["name"]),
        f"s{identity['seed']}", config_hash(identity),
    ])


def write_atomic(path: Path, record: Mapping[str, Any]) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a reader never sees half a record
    and a crash leaves the previous version. Any OS error (disk full, read-only folder) is a RecordError naming `path`,
    and no temporary file is left behind."""
    path = Path(path)
    try:
        existing = read(path)
    except CorruptRecordError:
        existing = None  # the caller moved it aside or is replacing it on purpose
    if existing is not None and existing.config_hash != record.get("config_hash"):
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


def read(path: Path) -> RunRecord | None:
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
    return RunRecord(record)


def move_aside(path: Path) -> Path:
    """Keep a damaged record under a name no reader picks up (`<name>.json.corrupt-<time>`) and return that name."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    return target


def iter_records(folder: Path, skipped: list[Path] | None = None) -> Iterator[RunRecord]:
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
        if record is not None and record.config_hash is not None:
            yield record


def state_of(record: RunRecord, path: Path) -> str:
    """The record's status, with a `running` record whose process is gone (no holder of its run lock: kill -9, power
    loss) reported as `interrupted`."""
    if record.status == "running" and not is_held(path):
        return "interrupted"
    return record.status
