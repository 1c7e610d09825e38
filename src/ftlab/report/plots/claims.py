"""results/claims.png: a forest plot of every claim x task, its estimate and 95% interval, the claimed region
shaded, the verdict colour-coded (written by `python -m ftlab.tables`, ftlab.report.claims)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..figures import pyplot, save_png

if TYPE_CHECKING:
    from ..claims import Outcome

COLOURS = {"holds": "#2e7d32", "does not hold": "#c62828", "inconclusive": "#ef6c00", "no runs": "#9e9e9e",
           "did not learn": "#6a1b9a"}


def _limits(outcomes: list[Outcome]) -> tuple[float, float]:
    """x range covering every finite estimate, interval end and region bound, padded."""
    values = [v for o in outcomes for v in (o.estimate, o.low, o.high, *o.claim.region())
              if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (-5.0, 5.0)
    pad = max(1.0, 0.08 * (hi - lo))
    return lo - pad, hi + pad


def forest_plot(outcomes: list[Outcome], path: Path) -> None:
    plt = pyplot()
    n = max(len(outcomes), 1)
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.3 * n))
    left, right = _limits(outcomes)
    for i, o in enumerate(outcomes):
        y = n - 1 - i   # first claim on top
        lo, hi = o.claim.region()
        lo, hi = max(lo, left), min(hi, right)
        ax.barh(y, hi - lo, left=lo, height=0.8, color="#a5d6a7", alpha=0.35, linewidth=0)
        colour = COLOURS[o.verdict]
        if o.low is not None:
            ax.errorbar(o.estimate, y, xerr=[[o.estimate - o.low], [o.high - o.estimate]], fmt="o", color=colour,
                        capsize=3, markersize=4)
        elif o.estimate is not None:  # n < 2 or gated: the point alone, hollow
            ax.plot([o.estimate], [y], "o", markerfacecolor="none", color=colour, markersize=5)
        ax.text(right, y, f"  {o.verdict} (n={o.n_a}/{o.n_b})", va="center", ha="left", fontsize=7, color=colour)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{o.claim.id} · {o.task}" for o in reversed(outcomes)] or [""], fontsize=7)
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, n - 0.4)
    ax.axvline(0.0, color="#616161", linewidth=0.6)
    ax.set_xlabel("estimate in metric points (A − B; A − r·B for ratio claims; std(A) − std(B)) with 95% interval; "
                  "shaded: the claimed region", fontsize=8)
    ax.set_title("Paper claims on our runs (results/claims.md)", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    fig.subplots_adjust(left=0.3, right=0.82, top=1 - 0.45 / (1.4 + 0.3 * n), bottom=0.6 / (1.4 + 0.3 * n))
    save_png(fig, path)
