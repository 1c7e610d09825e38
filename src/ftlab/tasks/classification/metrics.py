"""GLUE metrics as the papers report them (x100): accuracy, F1 (positive class), Matthews correlation, Pearson, Spearman.

scikit-learn and SciPy compute them; `evaluate.load` is avoided because it downloads its scripts from the hub.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ...errors import ConfigError

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),
    "mcc": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearman": lambda p, y: spearmanr(p, y)[0],
}


def predictions(logits: np.ndarray, kind: str) -> np.ndarray:
    """Class ids for classification, the scalar output for regression."""
    return logits.reshape(-1) if kind == "regression" else logits.argmax(-1)


def compute_metrics(names: Sequence[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; valid metrics: {sorted(METRICS)}")
    out = {}
    for name in names:
        value = float(METRICS[name](preds, labels))
        # a constant prediction has no correlation; report 0 rather than NaN so that selection still works
        out[name] = 0.0 if np.isnan(value) else 100.0 * value
    return out
