"""Per-epoch dev curves of a table's rows (conf/report/epochs.yaml; results/nxm_vs_asp_epochs.png): the dev metric of
each epoch from the records' metrics.history, mean over the seeds that reached it, one panel per table column.
Written by `python -m ftlab.tables` from the runs the table counts (ftlab.report.protocol) and only those.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ...errors import ConfigError
from ..figures import pyplot, save_png
from ..gates import Gate
from ...records import RunRecord
from ..tables import METRIC_NAMES, column_title


def epoch_means(records: list[RunRecord], split: str | None, metric: str) -> tuple[list[int], list[float]]:
    """(epochs, mean over the records that have that epoch) of `split`/`metric` (default split: selection's)."""
    per_epoch: dict[int, list[float]] = {}
    for record in records:
        for epoch, value in record.epoch_scores(split, metric):
            per_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def epoch_plot(experiment: DictConfig, runs: Any, rows: list[str], gate: Gate, path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = list(experiment.table.columns)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        drawn = False
        for label in rows:
            recs = runs.runs(label, column.task)
            epochs, means = epoch_means(recs, column.get("split"), column.metric)
            if epochs:
                ax.plot([e + 1 for e in epochs], means, marker="o", markersize=3, label=f"{label} (n={len(recs)})")
                drawn = True
        threshold = gate.threshold(column.task, column.metric)
        if threshold is not None:
            ax.axhline(threshold, color="#6a1b9a", linestyle="--", linewidth=0.8, label="did-not-learn gate")
        if not drawn:
            ax.text(0.5, 0.75, f"no protocol-matching runs\n({len(runs.excluded)} excluded: results/"
                    f"{experiment.table.name}.md)", transform=ax.transAxes, ha="center", va="center", fontsize=7)
        ax.set_title(column_title(column), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(f"dev {METRIC_NAMES.get(column.metric, column.metric)}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{' vs '.join(rows)}: dev metric per epoch, mean over seeds ({experiment.table.name}, "
                 f"protocol-matching runs only)", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def write_epoch_plots(spec_path: Path, tables: dict[str, tuple[DictConfig, Any]], gate: Gate,
                      results_dir: Path) -> list[Path]:
    spec = OmegaConf.load(spec_path)
    written = []
    for plot in spec.plots:
        if plot.table not in tables:
            raise ConfigError(f"{spec_path}: plot {plot.file}: no experiment with a table named {plot.table!r}")
        experiment, runs = tables[plot.table]
        labels = [row.label for row in experiment.table.rows]
        unknown = [label for label in plot.rows if label not in labels]
        if unknown:
            raise ConfigError(f"{spec_path}: plot {plot.file}: table {plot.table!r} has no row {unknown}; rows: {labels}")
        path = results_dir / plot.file
        epoch_plot(experiment, runs, list(plot.rows), gate, path)
        written.append(path)
    return written
