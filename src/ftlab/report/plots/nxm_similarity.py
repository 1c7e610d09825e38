"""Mask similarity vs dev metric across rho, from run records (the idea of NxMTransformer's Figure 3).

    python -m ftlab.report.plots.nxm_similarity results/records/nxm_table1 [--out results]

One point per completed `nxm` run: x = its mean ADMM mask similarity |M_k ∩ M_{k-1}| / |M_k| over iterations,
y = its best dev score on the task's selection metric, labelled by rho; one figure per task,
results/nxm_similarity_<task>.png. The paper reports accuracy rising with similarity up to about 99%, then falling.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ... import records
from ...config import PROJECT_ROOT


def collect(records_dir: Path, method: str = "nxm") -> list[dict[str, Any]]:
    """(task, rho, lr, batch size, mean similarity, best dev score, metric) of every completed run of `method`."""
    points = []
    for record in records.iter_records(records_dir):
        if not record.completed or record.method_name != method:
            continue
        admm = record.method_report.get("admm") or {}
        score = record.best_score()
        if admm.get("mean_similarity") is None or score is None:
            continue
        config = record.config
        points.append({
            "task": record.task_name, "rho": admm["rho"], "lr": config["optim"]["lr"],
            "batch_size": config["train"]["batch_size"], "similarity": admm["mean_similarity"],
            "score": score, "metric": record.selection.metric,
        })
    return sorted(points, key=lambda p: (p["task"], p["similarity"]))


def plot(points: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task in sorted({p["task"] for p in points}):
        mine = [p for p in points if p["task"] == task]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter([100 * p["similarity"] for p in mine], [p["score"] for p in mine])
        for p in mine:
            ax.annotate(f"ρ={p['rho']:g}, lr={p['lr']:g}", (100 * p["similarity"], p["score"]), fontsize=7)
        ax.set_xlabel("mean mask similarity between ADMM iterations (%)")
        ax.set_ylabel(f"best dev {mine[0]['metric']}")
        ax.set_title(f"NxM (2:4) on {task}: similarity vs {mine[0]['metric']}")
        fig.tight_layout()
        path = out_dir / f"nxm_similarity_{task}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records_dir", type=Path)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument("--method", default="nxm")
    args = parser.parse_args(argv)
    points = collect(args.records_dir, args.method)
    if not points:
        print(f"no completed {args.method} runs with ADMM similarity under {args.records_dir}", file=sys.stderr)
        return 1
    for p in points:
        print(f"{p['task']:6s} rho={p['rho']:<8g} lr={p['lr']:<8g} similarity={100 * p['similarity']:.2f}% "
              f"{p['metric']}={p['score']:.2f}")
    for path in plot(points, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
