"""Deterministic PNG output for the plots `python -m ftlab.tables` commits: a fixed size and dpi, the Agg backend, and
no metadata (matplotlib writes its version as "Software" by default), so the same runs give the same bytes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 100


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display; the same rasteriser everywhere)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    """Write `fig` to `path` with no metadata and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    pyplot().close(fig)
