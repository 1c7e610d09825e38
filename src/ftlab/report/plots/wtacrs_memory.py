"""Bar plot of memory per method (the idea of WTA-CRS Table 2 / Figure 13), from the benchmark output or run records.

    python -m ftlab.report.plots.wtacrs_memory results/wtacrs_memory.json [--out results]
    python -m ftlab.report.plots.wtacrs_memory results/records/wtacrs_cpu [--out results]

From the benchmark JSON (benchmarks/wtacrs_memory.py): per setup, the whole-step saved-tensor peak and the saved bytes
of the replaced layers of each method, with the ratio to its baseline over each bar -> results/wtacrs_memory_<setup>.png.
From a records folder: per method (and budget), the mean saved-tensor bytes of the whole forward measured in the run
(every run since records carry cost.saved_tensors; older records: WTA-CRS runs only) and the peak RSS -> results/wtacrs_memory_records.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ... import records

MIB = 2**20


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], ylabel: str, notes: list[str] | None = None) -> None:
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        if notes and i == 0:
            for bar, note in zip(bars, notes):
                ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(top=1.3 * max(max(v) for v in series.values()))  # room for the legend above the bars
    ax.legend(loc="upper right", ncol=len(series))


def plot_benchmark(path: Path, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for setup in json.loads(path.read_text()):
        methods = setup["methods"]
        labels = list(methods)
        whole = [methods[m]["whole_step_saved_bytes"] / MIB for m in labels]
        replaced = [methods[m]["replaced_layers_bytes"] / MIB for m in labels]
        notes = [f"{methods[m]['whole_step_ratio']:.2f}x" for m in labels]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        _bars(ax, labels, {"whole step (saved tensors)": whole, "replaced layers": replaced}, "MiB saved for backward", notes)
        ax.set_title(f"{setup['backbone']}, real RTE batch {setup['batch']} x {setup['positions']}, bf16 (ratio vs baseline)")
        fig.tight_layout()
        target = out / f"wtacrs_memory_{setup['backbone']}.png"
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append(target)
    return written


def plot_records(folder: Path, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    saved: dict[str, list[float]] = defaultdict(list)
    rss: dict[str, list[float]] = defaultdict(list)
    for record in records.iter_records(folder):
        if not record.completed:
            continue
        method = record.method
        label = method["name"] + (f"@{method['budget']}" if "budget" in method else "")
        first_step = record.cost.get("saved_tensors")  # every run since telemetry measures it
        if first_step is None:  # older WTA-CRS records carried it in the method's report only
            first_step = record.method_report.get("saved_tensors")
            first_step = {"bytes": first_step["whole_forward_bytes"]} if first_step else None
        if first_step is not None:
            saved[label].append(first_step["bytes"] / MIB)
        if record.cost.get("cpu_peak_rss_mb") is not None:
            rss[label].append(record.cost["cpu_peak_rss_mb"])
    labels = sorted(set(saved) | set(rss))
    if not labels:
        sys.exit(f"no completed records under {folder}")
    series = {"peak RSS (MiB)": [statistics.fmean(rss[m]) if rss[m] else 0.0 for m in labels],
              "saved tensors, first step (MiB)": [statistics.fmean(saved[m]) if saved[m] else 0.0 for m in labels]}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _bars(ax, labels, series, "MiB (mean over runs)")
    ax.set_title(f"memory per method: {folder.name}")
    fig.tight_layout()
    target = out / "wtacrs_memory_records.png"
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return [target]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="benchmark JSON or a records folder")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_benchmark if args.source.is_file() else plot_records
    for path in plot(args.source, args.out):
        print(path)


if __name__ == "__main__":
    main()
