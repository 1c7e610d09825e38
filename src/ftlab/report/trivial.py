"""The trivial predictor's GLUE dev scores, written once to the committed results/trivial_scores.csv:
`python -m ftlab.report.trivial` (reads paths.data_dir: FTLAB_DATA_DIR or ../shared/data).

The trivial predictor of a task is the one that learns nothing from the text: the majority class of the train split
(ties: the lower class id) for classification, the constant train mean for regression, predicted for every dev
example and scored with ftlab's own metric functions (`ftlab.tasks.classification.metrics.compute_metrics`). The
Pearson and Spearman correlations of a constant prediction are undefined; by ftlab's convention (the same as for a run
that predicts a constant) they are 0. The tasks are those the did-not-learn gate names (ftlab.report.gates), which
reads this file.

Why a committed file rather than reading the data at every `python -m ftlab.tables`: the tables must stay a pure
function of committed files (records, configs, this CSV), regenerate byte-identically on a machine without the GLUE
folder (CI), and never cache anything behind the reader's back. The data are read only when this command regenerates
the CSV; `tests/test_claims.py` recomputes it from the data when the data folder is there and fails if the committed
file is stale.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..config import CONF_DIR, PROJECT_ROOT
from ..errors import DataError
from ..tasks.classification.glue import read_local_split
from ..tasks.classification.metrics import compute_metrics
from .gates import GATES_YAML, gated_tasks

TRIVIAL_CSV = PROJECT_ROOT / "results" / "trivial_scores.csv"
FIELDS = ["task", "metric", "split", "trivial", "predictor", "train_rows", "dev_rows"]


def default_data_dir() -> Path:
    """paths.data_dir's default, as conf/config.yaml resolves it."""
    return Path(os.environ.get("FTLAB_DATA_DIR") or PROJECT_ROOT / ".." / "shared" / "data")


def trivial_rows(task: DictConfig, data_dir: Path) -> list[dict[str, str]]:
    """One CSV row per metric of `task`: the trivial predictor's dev score (x100, as runs report it)."""
    train, dev = read_local_split(data_dir, task, "train"), read_local_split(data_dir, task, "dev")
    labels = np.asarray([row["label"] for row in dev])
    if task.kind == "regression":
        constant = float(np.mean([row["label"] for row in train]))
        predictor = f"constant train mean {constant:.4f}"
    else:
        counts = Counter(row["label"] for row in train)
        constant = max(sorted(counts), key=lambda label: counts[label])  # sorted first: ties go to the lower id
        predictor = f"majority class {constant} of train ({100 * counts[constant] / len(train):.1f}%)"
    with warnings.catch_warnings():  # scipy warns that a constant has no correlation: that is the point
        warnings.simplefilter("ignore")
        scores = compute_metrics(list(task.metrics), np.full(len(labels), constant), labels)
    return [{"task": task.name, "metric": metric, "split": "dev", "trivial": f"{score:.4f}", "predictor": predictor,
             "train_rows": str(len(train)), "dev_rows": str(len(dev))} for metric, score in scores.items()]


def compute_csv(tasks: list[str], data_dir: Path, conf_dir: Path = CONF_DIR) -> str:
    """The CSV text for `tasks` (sorted): deterministic, so regenerating on the same data gives the same bytes."""
    if not data_dir.is_dir():
        raise DataError(f"GLUE data folder not found: {data_dir}. The trivial scores are computed from "
                        f"<data_dir>/glue/<TASK>/{{train,dev}}.tsv: set FTLAB_DATA_DIR to the folder holding glue/.")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for name in sorted(set(tasks)):
        writer.writerows(trivial_rows(OmegaConf.load(conf_dir / "task" / f"{name}.yaml"), data_dir))
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder holding glue/<TASK>/*.tsv")
    parser.add_argument("--out", type=Path, default=TRIVIAL_CSV)
    args = parser.parse_args(argv)
    args.out.write_text(compute_csv(gated_tasks(GATES_YAML), args.data))
    print(args.out)


if __name__ == "__main__":
    main()
