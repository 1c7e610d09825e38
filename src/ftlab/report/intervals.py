"""95% intervals for the claims engine: Welch's t interval of a (scaled) difference of means, and a seeded bootstrap
interval of a difference of standard deviations. Pure functions of the scores: the same runs give the same interval.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_ROUNDS = 10_000
BOOTSTRAP_SEED = 0   # fixed: claims.md must regenerate byte-identically


def welch_interval(a: Sequence[float], b: Sequence[float], r: float = 1.0,
                   level: float = LEVEL) -> tuple[float, float, float]:
    """(estimate, low, high) of mean(A) - r * mean(B) with Welch's t interval (unequal variances).

    Var = s_A^2 / n_A + r^2 s_B^2 / n_B; degrees of freedom by Welch-Satterthwaite. r = 1 is the plain difference of
    means; r = 0.98 tests "A is at least 98% of B" as A - 0.98 B >= 0 without dividing by a noisy B. Needs n >= 2 on
    each side. When both sides have zero spread the interval is the point itself (no df exists)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's interval needs at least 2 runs a side, got {len(a)} and {len(b)}")
    estimate = statistics.fmean(a) - r * statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), r * r * statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0:
        return estimate, estimate, estimate
    df = se2 * se2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(se2)
    return estimate, estimate - half, estimate + half


def bootstrap_std_difference(a: Sequence[float], b: Sequence[float], rounds: int = BOOTSTRAP_ROUNDS,
                             seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """(estimate, low, high) of std(A) - std(B) (sample std over seeds): percentile bootstrap, each side's seeds
    resampled with replacement independently, from a fixed generator so the interval is reproducible."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a std needs at least 2 runs a side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    sa = xa[rng.integers(0, len(xa), size=(rounds, len(xa)))].std(axis=1, ddof=1)
    sb = xb[rng.integers(0, len(xb), size=(rounds, len(xb)))].std(axis=1, ddof=1)
    low, high = np.quantile(sa - sb, [0.5 - level / 2, 0.5 + level / 2])
    return statistics.stdev(a) - statistics.stdev(b), float(low), float(high)
