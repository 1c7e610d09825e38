"""Figures `python -m ftlab.tables` draws from the runs a table counts (conf/report/figures.yaml):

* `params`: the table's metric against the share of pre-trained block-linear weights kept (DSEE Tables 3 and 6 as a
  picture; results/dsee_cpu_params.png): one panel per task (its first column, the claims' metric), one point per row, x = the runs' median
  `method_report.block_nonzero_percent` (100 for a run whose method reports none: full fine-tuning, LoRA), y = the
  mean over seeds with a ±1 std bar; marker by pruning mode. A CSV of the plotted points sits beside it.
* `seeds`: a per-seed strip plot per row (DPS: the claim is about stability over restarts; results/<table>_seeds.png):
  one panel per column, one dot per run, the mean as a bar and ±1 std as a line.

Only the runs the table counts (ftlab.report.protocol) are drawn; a cell that did not clear the did-not-learn gate is
drawn hollow, and the gate is a dashed line. A panel with no runs says so (an honest empty state, never a crash).
PNG bytes are deterministic (ftlab.report.figures).
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ...errors import ConfigError
from ..figures import pyplot, save_png
from ..gates import Gate
from ...records import RunRecord
from ..tables import METRIC_NAMES, column_title

MARKERS = {"dense": "D", "none": "o", "unstructured": "s", "structured": "^"}
MODE_NAMES = {"dense": "full fine-tuning", "none": "adapters, no pruning", "unstructured": "unstructured pruning",
              "structured": "heads removed"}


def _values(runs: Any, label: str, column: DictConfig) -> list[float]:
    values = (r.best_score(column.get("split"), column.metric) for r in runs.runs(label, column.task))
    return [v for v in values if v is not None]


def _kept_percent(records: list[RunRecord]) -> float:
    """Median share of pre-trained block-linear weights a row's runs keep (100 when the method reports none)."""
    kept = [r.method_report.get("block_nonzero_percent") for r in records]
    return statistics.median([100.0 if k is None else float(k) for k in kept])


def _prune_mode(records: list[RunRecord]) -> str:
    report = records[0].method_report if records else {}
    return str(report.get("prune") or ("none" if "prune" in report else "dense"))


def _gate_line(ax: Any, gate: Gate, column: DictConfig) -> None:
    threshold = gate.threshold(column.task, column.metric)
    if threshold is not None:
        ax.axhline(threshold, color="#6a1b9a", linestyle="--", linewidth=0.8, label="did-not-learn gate")


def _empty(ax: Any, experiment: DictConfig, runs: Any) -> None:
    ax.text(0.5, 0.72, f"no protocol-matching runs yet\n({len(runs.excluded)} excluded: results/"
            f"{experiment.table.name}.md)", transform=ax.transAxes, ha="center", va="center", fontsize=7)


def _first_per_task(experiment: DictConfig) -> list[DictConfig]:
    """One column per task, its first (the claims' metric): the other metrics of a task add panels, not information."""
    first: dict[str, DictConfig] = {}
    for column in experiment.table.columns:
        first.setdefault(column.task, column)
    return list(first.values())


def params_points(experiment: DictConfig, runs: Any, gate: Gate) -> list[dict[str, Any]]:
    """The plotted points: per column and row with runs, x (% kept), mean, std, n, mode, gate verdict."""
    points = []
    for column in _first_per_task(experiment):
        for row in experiment.table.rows:
            values = _values(runs, row.label, column)
            if not values:
                continue
            records = runs.runs(row.label, column.task)
            points.append({
                "column": column_title(column), "row": row.label, "kept_percent": round(_kept_percent(records), 2),
                "mean": round(statistics.fmean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else "",
                "n": len(values), "prune": _prune_mode(records),
                "did_not_learn": gate.fails(column.task, column.metric, values)})
    return points


def params_plot(experiment: DictConfig, runs: Any, gate: Gate, path: Path) -> list[Path]:
    plt = pyplot()
    columns = _first_per_task(experiment)
    points = params_points(experiment, runs, gate)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.3 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        mine = [p for p in points if p["column"] == column_title(column)]
        for mode, marker in MARKERS.items():
            for p in (p for p in mine if p["prune"] == mode):
                hollow = p["did_not_learn"]
                ax.errorbar(p["kept_percent"], p["mean"], yerr=p["std"] or 0.0, fmt=marker, markersize=5,
                            capsize=2, color="#1565c0", markerfacecolor="none" if hollow else "#1565c0")
                ax.annotate(p["row"], (p["kept_percent"], p["mean"]), fontsize=5, xytext=(3, 2),
                            textcoords="offset points")
        _gate_line(ax, gate, column)
        if not mine:
            _empty(ax, experiment, runs)
        ax.set_title(column_title(column), fontsize=9)
        ax.set_xlabel("pre-trained block-linear weights kept (%)", fontsize=7)
        ax.set_ylabel(f"dev {METRIC_NAMES.get(column.metric, column.metric)} (mean ± std over seeds)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_xlim(40, 112)
    handles = [plt.Line2D([], [], marker=m, linestyle="", color="#1565c0", label=MODE_NAMES[mode])
               for mode, m in MARKERS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"{experiment.table.name}: dev metric vs share of pre-trained weights kept (protocol-matching runs "
                 f"only; hollow = did not learn)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_png(fig, path)
    table = path.with_suffix(".csv")
    out = io.StringIO()
    fields = ["column", "row", "kept_percent", "mean", "std", "n", "prune", "did_not_learn"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    table.write_text(out.getvalue())
    return [path, table]


def seeds_plot(experiment: DictConfig, runs: Any, gate: Gate, path: Path) -> list[Path]:
    plt = pyplot()
    columns = list(experiment.table.columns)
    rows = [row.label for row in experiment.table.rows]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 3.9), squeeze=False)
    for ax, column in zip(axes[0], columns):
        drawn = False
        for x, label in enumerate(rows):
            values = _values(runs, label, column)
            if not values:
                continue
            drawn = True
            hollow = gate.fails(column.task, column.metric, values)
            # a fixed, deterministic spread of the dots around x (no random jitter)
            offsets = [(i - (len(values) - 1) / 2) * min(0.08, 0.5 / len(values)) for i in range(len(values))]
            ax.scatter([x + o for o in offsets], values, s=12, color="#1565c0",
                       facecolors="none" if hollow else "#1565c0", zorder=3)
            mean = statistics.fmean(values)
            ax.hlines(mean, x - 0.3, x + 0.3, color="#c62828", linewidth=1.2, zorder=2)
            if len(values) > 1:
                spread = statistics.stdev(values)
                ax.vlines(x + 0.34, mean - spread, mean + spread, color="#c62828", linewidth=0.8)
            ax.text(x, 1.0, f"n={len(values)}", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=5)
        _gate_line(ax, gate, column)
        if not drawn:
            _empty(ax, experiment, runs)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, rotation=60, ha="right", fontsize=6)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_title(column_title(column), fontsize=9, pad=10)
        ax.set_ylabel(f"dev {METRIC_NAMES.get(column.metric, column.metric)} per seed", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{experiment.table.name}: one dot per seed (best-on-dev), red bar = mean, red line = ±1 std; "
                 f"hollow = did not learn; dashed = gate", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    return [path]


KINDS = {"params": params_plot, "seeds": seeds_plot}


def write_figures(spec_path: Path, tables: dict[str, tuple[DictConfig, Any]], gate: Gate,
                  results_dir: Path) -> list[Path]:
    """Every figure of conf/report/figures.yaml (a kind -> a list of {file, table})."""
    spec = OmegaConf.load(spec_path)
    written: list[Path] = []
    for kind, figures in (spec.get("figures") or {}).items():
        if kind not in KINDS:
            raise ConfigError(f"{spec_path}: unknown figure kind {kind!r}; kinds: {sorted(KINDS)}")
        for figure in figures:
            if figure.table not in tables:
                raise ConfigError(f"{spec_path}: figure {figure.file}: no experiment with a table named "
                                  f"{figure.table!r}; tables: {sorted(tables)}")
            experiment, runs = tables[figure.table]
            path = results_dir / figure.file
            path.parent.mkdir(parents=True, exist_ok=True)
            written += KINDS[kind](experiment, runs, gate, path)
    return written
