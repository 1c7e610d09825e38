"""Dev metric vs % of pre-trained parameters kept, from DSEE / LoRA run records (DSEE Tables 3 and 6 as a picture).

    python experiments/dsee_params_plot.py results/records/dsee_cpu [--out results]

One point per (task, configuration): x = non-zero pre-trained block-linear weights kept, in % of the dense model
(`method_report.block_nonzero_percent`: the paper's "total parameters" axis; 100 for LoRA; removed heads count as
removed), y = median over seeds of the best dev score on the task's selection metric. Marker by pruning mode
(none, unstructured, structured); the label gives the variant (or density / heads). One figure per task,
results/dsee_params_<task>.png, and a CSV of the points beside it.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ftlab import records

MARKERS = {"none": "o", "unstructured": "s", "structured": "^"}


def describe(config: dict[str, Any], report: dict[str, Any]) -> str:
    if config.get("variant"):
        return str(config["variant"])
    prune = report.get("prune", "none")
    if prune == "unstructured":
        return f"{100 * report['density_target']:.0f}%"
    if prune == "structured":
        return f"-{max(report['heads_removed_per_layer'])} heads"
    return "LoRA" if not report.get("num_sparse") else "LoRA + S"


def collect(records_dir: Path) -> list[dict[str, Any]]:
    """Median over seeds per (task, label): x (% kept), y (best dev score), prune mode, metric, seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records.iter_records(records_dir):
        config, report = record.get("config", {}), record.get("method_report") or {}
        if record.get("status") != "completed" or config.get("method", {}).get("name") not in ("dsee", "lora"):
            continue
        selection = record["metrics"]["selection"]
        best = (record["metrics"].get("best") or {}).get("metrics") or {}
        score = best.get(selection["split"], {}).get(selection["metric"])
        if score is None or report.get("block_nonzero_percent") is None:
            continue
        label = describe(config, report)
        groups[(config["task"]["name"], label)].append({
            "x": report["block_nonzero_percent"], "y": score, "prune": report.get("prune", "none"),
            "metric": selection["metric"],
        })
    points = []
    for (task, label), runs in sorted(groups.items()):
        points.append({
            "task": task, "label": label, "prune": runs[0]["prune"], "metric": runs[0]["metric"],
            "kept_percent": statistics.median(r["x"] for r in runs), "score": statistics.median(r["y"] for r in runs),
            "seeds": len(runs),
        })
    return points


def plot(points: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted({p["task"] for p in points}):
        mine = [p for p in points if p["task"] == task]
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        for prune, marker in MARKERS.items():
            chosen = [p for p in mine if p["prune"] == prune]
            ax.scatter([p["kept_percent"] for p in chosen], [p["score"] for p in chosen], marker=marker, label=prune)
        for p in mine:
            ax.annotate(p["label"], (p["kept_percent"], p["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("pre-trained block-linear weights kept (%)")
        ax.set_ylabel(f"dev {mine[0]['metric']} (median of seeds)")
        ax.set_title(task)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"dsee_params_{task}.png"
        fig.savefig(path, dpi=150)
        plt.close(fig)
        written.append(path)
    table = out_dir / "dsee_params.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(points[0]))
        writer.writeheader()
        writer.writerows(points)
    return written + [table]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    points = collect(args.records_dir)
    if not points:
        print(f"no completed dsee/lora records with an efficiency report under {args.records_dir}", file=sys.stderr)
        return 1
    for path in plot(points, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
