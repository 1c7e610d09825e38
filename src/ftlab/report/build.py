"""Everything `python -m ftlab.tables` writes (ftlab/tables/__main__.py calls `main`): every results/<table>.md and
.csv (ftlab.report.tables), then results/claims.md, .csv and .png (ftlab.report.claims, plots.claims), the per-epoch
plots (plots.epochs) and the figures of conf/report/figures.yaml (plots.figures), all from the same protocol-matching
runs and the same did-not-learn gate. This module sits above all of them; none of them imports it."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import CONF_DIR, PROJECT_ROOT
from .claims import evaluate_all, render_csv, render_markdown
from .gates import Gate, load_gate
from .plots.claims import forest_plot
from .plots.epochs import write_epoch_plots
from .plots.figures import write_figures
from .protocol import Protocol
from .tables import current_records, experiment_runs, write_tables


def write_claims(claims_dir: Path, tables: dict[str, tuple[DictConfig, Any]], gate: Gate,
                 results_dir: Path) -> list[Path]:
    """results/claims.md, claims.csv and claims.png."""
    outcomes = evaluate_all(claims_dir, tables, gate)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = [results_dir / "claims.md", results_dir / "claims.csv", results_dir / "claims.png"]
    paths[0].write_text(render_markdown(outcomes, tables, gate))
    paths[1].write_text(render_csv(outcomes))
    forest_plot(outcomes, paths[2])
    return paths


def write_report(conf_dir: Path, records_dir: Path, results_dir: Path) -> list[Path]:
    """What `python -m ftlab.tables` writes: every table, then claims.md/.csv/.png, the per-epoch plots and the
    figures (metric vs weights kept, per-seed strips), all from the same protocol-matching runs and the same gate."""
    tables = experiment_runs(conf_dir, current_records(records_dir), Protocol(conf_dir).mismatches)
    gate = load_gate(conf_dir / "report" / "gates.yaml")
    written = write_tables(conf_dir, records_dir, results_dir, tables, gate)
    written += write_claims(conf_dir / "claims", tables, gate, results_dir)
    written += write_epoch_plots(conf_dir / "report" / "epochs.yaml", tables, gate, results_dir)
    written += write_figures(conf_dir / "report" / "figures.yaml", tables, gate, results_dir)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate every results/<table>.md and .csv from the run records")
    parser.add_argument("--conf", type=Path, default=CONF_DIR, help="config folder holding experiment/ and report/tables/")
    parser.add_argument("--records", type=Path, default=PROJECT_ROOT / "results" / "records")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "results")
    args = parser.parse_args(argv)
    for path in write_report(args.conf, args.records, args.results):
        print(path.relative_to(args.results.parent) if path.is_relative_to(args.results.parent) else path)


if __name__ == "__main__":
    main()
