"""Regenerate every results/<table>.md and .csv from the run records: `python -m ftlab.tables`.

A table is declared by the `table:` block of an experiment YAML (conf/experiment/*.yaml): rows (a method, optionally
filtered by config values), columns (task, metric, split), the aggregation rule over the records of each cell, and
the published numbers it is compared with (src/ftlab/paper/*.yaml). Output depends on the records alone, so the same
records always give byte-identical files.
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import records as records_io
from .config import CONF_DIR, PROJECT_ROOT
from .errors import ConfigError

PAPER_DIR = Path(__file__).parent / "paper"
RULES = {
    "best": "best over the grid and seeds (max of the per-run best-on-dev scores)",
    "median": "median over seeds of the per-run best-on-dev scores",
    "mean_std": "mean ± sample std over seeds of the per-run best-on-dev scores",
}
METRIC_NAMES = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _matches(record: dict[str, Any], row: DictConfig, column: DictConfig) -> bool:
    config = record["config"]
    if record.get("status") != "completed" or config["task"]["name"] != column.task:
        return False
    if config["method"]["name"] != row.method:
        return False
    return all(_lookup(config, key) == value for key, value in (row.get("where") or {}).items())


def _score(record: dict[str, Any], column: DictConfig) -> float | None:
    best = record["metrics"].get("best") or {}
    split = column.get("split") or record["metrics"]["selection"]["split"]
    return (best.get("metrics") or {}).get(split, {}).get(column.metric)


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


def agreement(recs: list[dict[str, Any]], column: DictConfig) -> str:
    """Share of dev examples every restart gets right (easy), every restart gets wrong (hard), and the rest."""
    split = column.get("split")
    lists = []
    for r in recs:
        correct = (r["metrics"].get("best") or {}).get("correct") or {}
        key = split or r["metrics"]["selection"]["split"]
        if key in correct:
            lists.append(correct[key])
    if len(lists) < 2 or len({len(c) for c in lists}) != 1:
        return "—"
    n = len(lists[0])
    easy = sum(all(c[i] for c in lists) for i in range(n)) / n
    hard = sum(not any(c[i] for c in lists) for i in range(n)) / n
    return f"{100 * easy:.1f} / {100 * hard:.1f} / {100 * (1 - easy - hard):.1f}"


def column_title(column: DictConfig) -> str:
    key = column.get("key") or column.task
    return f"{key.upper().replace('_', '-')} {METRIC_NAMES.get(column.metric, column.metric)}"


def load_paper(spec: DictConfig | None) -> tuple[dict[str, dict[str, float]], str]:
    """(paper row label -> {column key -> value}, description) for the table's `paper:` block."""
    if not spec:
        return {}, ""
    data = OmegaConf.load(PAPER_DIR / spec.file)
    table = data.tables[spec.table]
    rows = OmegaConf.to_container(table.rows) if table.get("rows") else {}
    return rows, f"{data.source}; {table.setting}"


def build_table(experiment: DictConfig, all_records: list[dict[str, Any]]) -> tuple[str, str]:
    """(markdown, csv) for one experiment's table."""
    table = experiment.table
    rule = table.rule
    if rule not in RULES:
        raise ConfigError(f"table {table.name}: unknown rule {rule!r}; valid rules: {sorted(RULES)}")
    # `records_from`: experiments whose runs have exactly the config a row asks for (same identity hash), reused
    # rather than re-run; every row still filters records by method and `where`.
    sources = [experiment.experiment_name, *table.get("records_from", [])]
    mine = [r for r in all_records if r.get("experiment") in sources]
    paper_rows, paper_text = load_paper(table.get("paper"))
    paper_map = dict(table.paper.rows) if table.get("paper") else {}
    header = ["method", "source"] + [column_title(c) for c in table.columns]
    body: list[list[str]] = []
    agree: list[list[str]] = []
    ours: dict[str, list[list[float]]] = {}  # row label -> per column, the runs' scores (for `differences`)
    for row in table.rows:
        paper_label = paper_map.get(row.label)
        if paper_label is not None:
            numbers = paper_rows.get(paper_label, {})
            body.append([row.label, "paper"] + [_paper_value(numbers, c) for c in table.columns])
        cells, counts, agree_cells = [], [], []
        ours[row.label] = []
        for column in table.columns:
            recs = [r for r in mine if _matches(r, row, column)]
            values = [v for v in (_score(r, column) for r in recs) if v is not None]
            ours[row.label].append(values)
            cells.append(aggregate(values, rule))
            counts.append(len(values))
            agree_cells.append(agreement(recs, column))
        runs = max(counts) if counts else 0
        body.append([row.label, f"ours (n≤{runs})"] + cells)
        agree.append([row.label] + agree_cells)
    for diff in table.get("differences") or []:
        body += _difference_rows(diff, ours, paper_rows, paper_map, table.columns)
    md = io.StringIO()
    md.write(f"# {table.title}\n\n")
    folders = ", ".join(f"`{name}` (results/records/{name}/)" for name in sources)
    md.write(f"Generated by `python -m ftlab.tables` from {len(mine)} run records of experiment{'s' * (len(sources) > 1)} "
             f"{folders}; do not edit by hand.\n\n")
    md.write(f"- **ours**: {table.ours}. Cell rule: {RULES[rule]}; n = runs per cell.\n")
    if paper_text:
        md.write(f"- **paper**: {paper_text}.\n")
    md.write("- A dash means no completed run (or no published number) for that cell.\n\n")
    md.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
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


def _difference_rows(diff: DictConfig, ours: dict[str, list[list[float]]], paper_rows: dict[str, dict[str, float]],
                     paper_map: dict[str, str], columns: Any) -> list[list[str]]:
    """`{label, row, minus}`: per column, mean of `row`'s runs minus mean of `minus`'s (ours), and the same for the
    paper's numbers when both rows have one — how far a method lands from its baseline, stated in the table."""
    for name in (diff.row, diff.minus):
        if name not in ours:
            raise ConfigError(f"table difference {diff.label!r}: no row labelled {name!r}; rows: {sorted(ours)}")
    cells = []
    for a, b in zip(ours[diff.row], ours[diff.minus]):
        cells.append(f"{statistics.fmean(a) - statistics.fmean(b):+.2f}" if a and b else "—")
    rows = [[diff.label, "ours, difference of means"] + cells]
    if diff.row in paper_map and diff.minus in paper_map:
        a, b = paper_rows.get(paper_map[diff.row], {}), paper_rows.get(paper_map[diff.minus], {})
        keys = [c.get("key") or c.task for c in columns]
        rows.append([diff.label, "paper, difference"] + [f"{a[k] - b[k]:+.1f}" if k in a and k in b else "—" for k in keys])
    return rows


def _paper_value(numbers: dict[str, float], column: DictConfig) -> str:
    value = numbers.get(column.get("key") or column.task)
    return "—" if value is None else str(value)


def experiments_with_tables(conf_dir: Path) -> list[DictConfig]:
    found = []
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        experiment = OmegaConf.load(path)
        if experiment.get("table"):
            found.append(experiment)
    return found


def write_tables(conf_dir: Path, records_dir: Path, results_dir: Path) -> list[Path]:
    all_records = list(records_io.iter_records(records_dir))
    written = []
    for experiment in experiments_with_tables(conf_dir):
        md, table_csv = build_table(experiment, all_records)
        for suffix, text in ((".md", md), (".csv", table_csv)):
            path = results_dir / f"{experiment.table.name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", type=Path, default=CONF_DIR, help="config folder holding experiment/*.yaml")
    parser.add_argument("--records", type=Path, default=PROJECT_ROOT / "results" / "records")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "results")
    args = parser.parse_args(argv)
    for path in write_tables(args.conf, args.records, args.results):
        print(path.relative_to(args.results.parent) if path.is_relative_to(args.results.parent) else path)


if __name__ == "__main__":
    main()
