"""The did-not-learn gate: a group of runs learned a task only if the mean of their dev scores clears the trivial
predictor's dev score plus a margin (conf/report/gates.yaml; trivial scores from results/trivial_scores.csv, which
ftlab.report.trivial computes). Tables render a failing cell as "did not learn (value)"; claims with a failing side say
so instead of comparing two runs that both predict the majority class.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from ..config import CONF_DIR, PROJECT_ROOT
from ..errors import ConfigError, DataError

GATES_YAML = CONF_DIR / "report" / "gates.yaml"
TRIVIAL_CSV = PROJECT_ROOT / "results" / "trivial_scores.csv"


@dataclass(frozen=True)
class Gate:
    """(task, metric) -> (trivial score, margin). A metric without an entry is not gated."""

    levels: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    source: str = ""

    def threshold(self, task: str, metric: str) -> float | None:
        level = self.levels.get((task, metric))
        return None if level is None else level[0] + level[1]

    def fails(self, task: str, metric: str, values: Sequence[float]) -> bool:
        """True when runs exist, the metric is gated, and their mean does not clear trivial + margin."""
        threshold = self.threshold(task, metric)
        return bool(values) and threshold is not None and statistics.fmean(values) <= threshold

    def rule(self, task: str, metric: str) -> str:
        trivial, margin = self.levels[(task, metric)]
        return f"{trivial:.2f} + {margin:g} = {trivial + margin:.2f}"


def read_csv(path: Path) -> dict[tuple[str, str], float]:
    """(task, metric) -> trivial dev score, from a committed trivial_scores.csv."""
    if not path.is_file():
        raise DataError(f"trivial scores not found: {path}. Regenerate them from the GLUE data with "
                        f"`python -m ftlab.report.trivial` (reads FTLAB_DATA_DIR or ../shared/data).")
    with path.open(newline="") as handle:
        return {(row["task"], row["metric"]): float(row["trivial"]) for row in csv.DictReader(handle)}


def gated_tasks(path: Path = GATES_YAML) -> list[str]:
    return sorted(OmegaConf.load(path).margins)


def load_gate(path: Path = GATES_YAML) -> Gate:
    """The gate of a gates.yaml; every (task, metric) it names must have a trivial score in its CSV."""
    if not path.is_file():
        raise ConfigError(f"gate config not found: {path} (the tables command gates every cell on it)")
    spec = OmegaConf.load(path)
    csv_path = PROJECT_ROOT / spec.trivial_scores
    trivial = read_csv(csv_path)
    levels = {}
    for task, metrics in spec.margins.items():
        for metric, margin in metrics.items():
            if (task, metric) not in trivial:
                raise ConfigError(f"{path}: no trivial score for {task} {metric} in {csv_path}; regenerate it with "
                                  f"`python -m ftlab.report.trivial` (reads FTLAB_DATA_DIR or ../shared/data)")
            levels[(task, metric)] = (trivial[(task, metric)], float(margin))
    return Gate(levels, f"{_shown(path)}, {_shown(csv_path)}")


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else path.name
