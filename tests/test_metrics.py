"""Task metrics against hand computations from their definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ftlab.errors import ConfigError
from ftlab.tasks.classification.metrics import compute_metrics, predictions

PREDS = np.array([1, 1, 0, 1, 0, 0, 1, 0])
LABELS = np.array([1, 0, 0, 1, 1, 0, 1, 0])
TP, FP, FN, TN = 3, 1, 1, 3


def test_classification_metrics_match_definitions() -> None:
    m = compute_metrics(["accuracy", "f1", "mcc"], PREDS, LABELS)
    assert m["accuracy"] == pytest.approx(100 * 6 / 8)
    assert m["f1"] == pytest.approx(100 * 2 * TP / (2 * TP + FP + FN))
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert m["mcc"] == pytest.approx(100 * mcc)


def test_correlations_match_definitions() -> None:
    x = np.array([0.1, 0.4, 0.35, 0.8, 2.0])
    y = np.array([0.0, 0.5, 0.2, 1.0, 1.1])
    m = compute_metrics(["pearson", "spearman"], x, y)
    pearson = np.sum((x - x.mean()) * (y - y.mean())) / math.sqrt(np.sum((x - x.mean()) ** 2) * np.sum((y - y.mean()) ** 2))
    assert m["pearson"] == pytest.approx(100 * pearson)
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # no ties here
    rx, ry = rank(x), rank(y)
    assert m["spearman"] == pytest.approx(100 * np.corrcoef(rx, ry)[0, 1])


def test_constant_prediction_gives_zero_not_nan() -> None:
    assert compute_metrics(["mcc", "pearson"], np.zeros(4), np.array([0, 1, 0, 1])) == {"mcc": 0.0, "pearson": 0.0}


def test_predictions_argmax_and_regression() -> None:
    logits = np.array([[0.1, 0.9], [2.0, -1.0]])
    assert predictions(logits, "classification").tolist() == [1, 0]
    assert predictions(np.array([[0.3], [4.2]]), "regression").tolist() == [0.3, 4.2]


def test_unknown_metric_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid metrics"):
        compute_metrics(["bleu"], PREDS, LABELS)
