"""Every results/<table>.md and .csv from the run records (`python -m ftlab.tables` writes them, then the claims, the
per-epoch plots and the figures: ftlab.report.build).

A table is declared by conf/report/tables/<experiment>.yaml for the experiment conf/experiment/<experiment>.yaml: rows
(a method, optionally pinned to config values by `where`), columns (task, metric, split), the aggregation rule over
the records of each cell, and the published numbers it is compared with (src/ftlab/paper/*.yaml). A cell counts only
the runs of its protocol (ftlab.report.protocol: the config the row and column would launch today); the others are
named in the header as excluded.
A cell whose runs do not clear the did-not-learn gate (ftlab.report.gates) says so. Output depends on the records and
the committed config alone, so the same records always give byte-identical files.
"""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .. import records as records_io
from ..config import CONF_DIR, reporting_keys
from ..errors import ConfigError
from ..records import RunRecord
from .gates import Gate, load_gate
from .protocol import Protocol

PAPER_DIR = Path(__file__).parents[1] / "paper"
RULES = {
    "best": "best over the grid and seeds (max of the per-run best-on-dev scores)",
    "median": "median over seeds of the per-run best-on-dev scores",
    "mean_std": "mean ± sample std over seeds of the per-run best-on-dev scores",
}
METRIC_NAMES = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}


def _score(record: RunRecord, column: DictConfig) -> float | None:
    """A run's best-on-dev score on the column's split (default: the run's selection split) and metric."""
    return record.best_score(column.get("split"), column.metric)


# (experiment, row, task, record) -> the record's departures from the cell's protocol; empty = it counts
ProtocolCheck = Callable[[DictConfig, DictConfig, str, RunRecord], list[str]]


@dataclass
class TableRuns:
    """The records a table counts, per (row label, task), and the ones it excluded as off-protocol, with why."""

    sources: list[str]
    considered: int                                   # records of the source experiments, any status
    matched: dict[tuple[str, str], list[RunRecord]] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)   # record file -> differences to its closest row

    def runs(self, label: str, task: str) -> list[RunRecord]:
        return self.matched.get((label, task), [])


def collect_runs(experiment: DictConfig, all_records: list[RunRecord], protocol: ProtocolCheck) -> TableRuns:
    """Sort the completed records of the table's experiments (its own and `records_from`) into its cells: a record
    counts for a row and task when its method and task are the row's and the column's and `protocol` finds no
    difference; a record that could have counted for some row (same method, a task of the table) but matches none is
    excluded and named, never mixed in."""
    table = experiment.table
    sources = [experiment.experiment_name, *table.get("records_from", [])]
    mine = [r for r in all_records if r.experiment in sources]
    runs = TableRuns(sources, len(mine))
    tasks = {column.task for column in table.columns}
    for record in mine:
        task, method = record.task_name, record.method_name
        if not record.completed or task not in tasks:
            continue
        reasons, counted = [], False
        for row in table.rows:
            if row.method != method:
                continue
            differences = protocol(experiment, row, task, record)
            if differences:
                reasons.append(differences)
            else:
                runs.matched.setdefault((row.label, task), []).append(record)
                counted = True
        if reasons and not counted:
            runs.excluded[record.file] = min(reasons, key=len)
    return runs


def aggregate(values: list[float], rule: str) -> str:
    if not values:
        return "—"
    if rule == "best":
        return f"{max(values):.2f}"
    if rule == "median":
        return f"{statistics.median(values):.2f}"
    if rule == "mean_std":
        if len(values) == 1:  # a single run has no spread; "± 0.00" would claim one
            return f"{values[0]:.2f} (n=1)"
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
    raise ConfigError(f"unknown table rule {rule!r}; valid rules: {sorted(RULES)}")


def agreement(recs: list[RunRecord], column: DictConfig) -> str:
    """Share of dev examples every restart gets right (easy), every restart gets wrong (hard), and the rest."""
    lists = [c for c in (r.best_correct(column.get("split")) for r in recs) if c is not None]
    if len(lists) < 2 or len({len(c) for c in lists}) != 1:
        return "—"
    n = len(lists[0])
    easy = sum(all(c[i] for c in lists) for i in range(n)) / n
    hard = sum(not any(c[i] for c in lists) for i in range(n)) / n
    return f"{100 * easy:.1f} / {100 * hard:.1f} / {100 * (1 - easy - hard):.1f}"


def column_title(column: DictConfig) -> str:
    key = column.get("key") or column.task
    return f"{key.upper().replace('_', '-')} {METRIC_NAMES.get(column.metric, column.metric)}"


def load_paper(spec: DictConfig | None) -> tuple[dict[str, dict[str, Any]], str]:
    """(our row label -> {column key -> published value}, description) for the table's `paper:` block.

    `paper.rows` maps a row label to a row of `paper.table`, or to `{table: <another table of the file>, row: <label>}`
    when one of our tables gathers rows the paper spreads over several (dsee_cpu: Tables 1, 3 and 7); the description
    names every paper table used."""
    if not spec:
        return {}, ""
    data = OmegaConf.load(PAPER_DIR / spec.file)
    used: list[str] = [spec.table]
    numbers: dict[str, dict[str, Any]] = {}
    for label, target in (spec.get("rows") or {}).items():
        table_name, row = (target.table, target.row) if isinstance(target, DictConfig) else (spec.table, target)
        if table_name not in data.tables:
            raise ConfigError(f"paper row {label!r}: {spec.file} has no table {table_name!r}; tables: "
                              f"{sorted(data.tables)}")
        if table_name not in used:
            used.append(table_name)
        rows = data.tables[table_name].get("rows") or {}
        numbers[label] = OmegaConf.to_container(rows[row]) if row in rows else {}
    settings = "; ".join(data.tables[name].setting for name in used)
    return numbers, f"{data.source}; {settings}"


def build_table(experiment: DictConfig, all_records: list[RunRecord], protocol: ProtocolCheck | None = None,
                gate: Gate | None = None) -> tuple[str, str]:
    """(markdown, csv) for one experiment's table; `protocol` defaults to composing conf/ (ftlab.report.protocol), `gate` to
    none (write_tables passes conf/report/gates.yaml's)."""
    check = protocol or Protocol(CONF_DIR).mismatches
    return render_table(experiment, collect_runs(experiment, all_records, check), gate or Gate())


def render_table(experiment: DictConfig, runs: TableRuns, gate: Gate) -> tuple[str, str]:
    """(markdown, csv) of a table from the runs it counts."""
    table = experiment.table
    rule = table.rule
    if rule not in RULES:
        raise ConfigError(f"table {table.name}: unknown rule {rule!r}; valid rules: {sorted(RULES)}")
    paper_rows, paper_text = load_paper(table.get("paper"))
    header = ["method", "source"] + [column_title(c) for c in table.columns]
    body: list[list[str]] = []
    agree: list[list[str]] = []
    ours: dict[str, list[list[float]]] = {}  # row label -> per column, the runs' scores (for `differences`)
    failed: list[str] = []                   # cells that did not clear the gate, for the header
    for row in table.rows:
        if row.label in paper_rows:
            numbers = paper_rows[row.label]
            body.append([row.label, "paper"] + [_paper_value(numbers, c) for c in table.columns])
        cells, counts, agree_cells = [], [], []
        ours[row.label] = []
        for column in table.columns:
            recs = runs.runs(row.label, column.task)
            scored = [(r, v) for r, v in ((r, _score(r, column)) for r in recs) if v is not None]
            values = [v for _, v in scored]
            ours[row.label].append(values)
            cell = aggregate(values, rule)
            if gate.fails(column.task, column.metric, values):
                cell = f"did not learn ({cell})"
                files = ", ".join(f"`{r.file}`" for r, _ in scored)
                failed.append(f"{row.label} / {column_title(column)} (mean {statistics.fmean(values):.2f} ≤ "
                              f"{gate.rule(column.task, column.metric)}: {files})")
            cells.append(cell)
            counts.append(len(values))
            agree_cells.append(agreement(recs, column))
        n_runs = max(counts) if counts else 0
        body.append([row.label, f"ours (n≤{n_runs})"] + cells)
        agree.append([row.label] + agree_cells)
    for diff in table.get("differences") or []:
        body += _difference_rows(diff, ours, paper_rows, table.columns)
    md = io.StringIO()
    md.write(f"# {table.title}\n\n")
    sources = runs.sources
    folders = ", ".join(f"`{name}` (results/records/{name}/)" for name in sources)
    md.write(f"Generated by `python -m ftlab.tables` from {runs.considered} run records of "
             f"experiment{'s' * (len(sources) > 1)} {folders}; do not edit by hand.\n\n")
    md.write(f"- **ours**: {table.ours}. Cell rule: {RULES[rule]}; n = runs per cell.\n")
    if paper_text:
        md.write(f"- **paper**: {paper_text}.\n")
    md.write("- A dash means no completed run (or no published number) for that cell.\n")
    md.write(_protocol_line(experiment, runs))
    md.write(_gate_line(table, gate, failed))
    md.write("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for line in body:
        md.write("| " + " | ".join(line) + " |\n")
    if table.get("agreement"):
        md.write("\nPer-example agreement across restarts (dev, best epoch): % always right / always wrong / mixed.\n\n")
        md.write("| method | " + " | ".join(header[2:]) + " |\n|" + "---|" * (len(header) - 1) + "\n")
        for line in agree:
            md.write("| " + " | ".join(line) + " |\n")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return md.getvalue(), out.getvalue()


def _protocol_line(experiment: DictConfig, runs: TableRuns) -> str:
    text = (f"- **protocol**: a run counts only if its run-deciding config is the one `python run.py "
            f"experiment={experiment.experiment_name} method=<row> task=<column>` plus the row's `where` composes "
            f"today, seed aside (ftlab.report.protocol; a key the run predates matches only a `where` of null). ")
    if not runs.excluded:
        return text + "No record was excluded.\n"
    shown = []
    for name, differences in sorted(runs.excluded.items()):
        more = f"; {len(differences) - 3} more" if len(differences) > 3 else ""
        shown.append(f"`{name}` ({'; '.join(differences[:3])}{more})")
    return text + f"Excluded as off-protocol, {len(shown)} record{'s' * (len(shown) != 1)}: " + ", ".join(shown) + ".\n"


def _gate_line(table: DictConfig, gate: Gate, failed: list[str]) -> str:
    gated = [c for c in table.columns if gate.threshold(c.task, c.metric) is not None]
    if not gated:
        return "- **did-not-learn gate**: no column of this table is gated.\n"
    rules = ", ".join(f"{column_title(c)} > {gate.rule(c.task, c.metric)}" for c in gated)
    text = (f"- **did-not-learn gate**: a cell whose mean does not clear the trivial predictor's dev score + margin "
            f"({rules}; {gate.source}) reads \"did not learn (value)\". ")
    return text + ("No cell failed.\n" if not failed else "Failed: " + "; ".join(failed) + ".\n")


def _difference_rows(diff: DictConfig, ours: dict[str, list[list[float]]], paper_rows: dict[str, dict[str, Any]],
                     columns: Any) -> list[list[str]]:
    """`{label, row, minus}`: per column, mean of `row`'s runs minus mean of `minus`'s (ours), and the same for the
    paper's numbers when both rows have one — how far a method lands from its baseline, stated in the table."""
    for name in (diff.row, diff.minus):
        if name not in ours:
            raise ConfigError(f"table difference {diff.label!r}: no row labelled {name!r}; rows: {sorted(ours)}")
    cells = []
    for a, b in zip(ours[diff.row], ours[diff.minus]):
        cells.append(f"{statistics.fmean(a) - statistics.fmean(b):+.2f}" if a and b else "—")
    rows = [[diff.label, "ours, difference of means"] + cells]
    if diff.row in paper_rows and diff.minus in paper_rows:
        a, b = paper_rows[diff.row], paper_rows[diff.minus]
        keys = [_paper_key(c) for c in columns]
        rows.append([diff.label, "paper, difference"] + [
            f"{a[k] - b[k]:+.1f}" if k in a and k in b and _is_number(a[k]) and _is_number(b[k]) else "—"
            for k in keys])
    return rows


def _paper_key(column: DictConfig) -> str | None:
    """The paper value's key for a column: its `key` or task; None when the column sets `paper: false` (the paper
    reports another metric for that task, e.g. STS-B Pearson where the column is Spearman)."""
    if column.get("paper", True) is False:
        return None
    return column.get("key") or column.task


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _paper_value(numbers: dict[str, Any], column: DictConfig) -> str:
    key = _paper_key(column)
    value = None if key is None else numbers.get(key)
    return "—" if value is None else str(value)


def experiments_with_tables(conf_dir: Path) -> list[DictConfig]:
    """Every experiment that has a table, with its table spec as `table`: conf/report/tables/<experiment>.yaml beside
    conf/experiment/<experiment>.yaml (whose name and sweep the protocol composes). Reporting config stays out of the
    run config; the pair is joined here, for the reports alone."""
    found = []
    for path in sorted((conf_dir / "report" / "tables").glob("*.yaml")):
        source = conf_dir / "experiment" / path.name
        if not source.is_file():
            raise ConfigError(f"{path}: no experiment {source} (a table spec is named after the experiment it reports)")
        experiment = OmegaConf.load(source)
        experiment.table = OmegaConf.load(path)
        found.append(experiment)
    return found


def current_records(records_dir: Path) -> list[RunRecord]:
    """Every record below `records_dir`. One stored before reporting config left the run config (its config still
    carries `table` or `task.paper`) has a name of the old identity and would fail every protocol: an error names it
    and the command that re-keys it."""
    found = list(records_io.iter_records(records_dir))
    stale = [record.file for record in found if reporting_keys(record.get("config") or {})]
    if stale:
        raise ConfigError(f"{len(stale)} record(s) predate conf/report/ (their config carries table or task.paper), "
                          f"e.g. {', '.join(stale[:3])}: run `python -m ftlab.migrate` to re-key them, then this again")
    return found


def experiment_runs(conf_dir: Path, all_records: list[RunRecord],
                    protocol: ProtocolCheck) -> dict[str, tuple[DictConfig, TableRuns]]:
    """experiment_name -> (experiment, the runs its table counts), for every experiment that declares a table."""
    return {e.experiment_name: (e, collect_runs(e, all_records, protocol)) for e in experiments_with_tables(conf_dir)}


def write_tables(conf_dir: Path, records_dir: Path, results_dir: Path,
                 tables: dict[str, tuple[DictConfig, TableRuns]] | None = None, gate: Gate | None = None) -> list[Path]:
    """Every table's .md and .csv; the protocol is composed from `conf_dir`, the gate read from its report/gates.yaml."""
    if tables is None:
        tables = experiment_runs(conf_dir, current_records(records_dir), Protocol(conf_dir).mismatches)
    gate = gate or load_gate(conf_dir / "report" / "gates.yaml")
    written = []
    for experiment, runs in tables.values():
        md, table_csv = render_table(experiment, runs, gate)
        for suffix, text in ((".md", md), (".csv", table_csv)):
            path = results_dir / f"{experiment.table.name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written
