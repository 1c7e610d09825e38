"""Tables are a pure function of the records: a golden rendering, the aggregation rules, and byte-identical regeneration."""
from __future__ import annotations

from pathlib import Path

import pytest

from ftlab import records
from ftlab.config import PROJECT_ROOT
from ftlab.errors import ConfigError
from ftlab.tables import aggregate, write_tables

FIXTURES = Path(__file__).parent / "fixtures"


def fake_record(task: str, method: str, seed: int, score: float, correct: list[int], rho: float | None = None,
                status: str = "completed", split: str = "dev", metric: str = "accuracy") -> dict:
    method_cfg = {"name": method, **({"rho": rho} if rho is not None else {})}
    return {
        "name": f"{task}-{method}-{seed}-{rho}", "config_hash": f"{task}{method}{seed}{rho}", "status": status,
        "experiment": "golden", "config": {"task": {"name": task}, "method": method_cfg, "seed": seed},
        "metrics": {"selection": {"split": split, "metric": metric},
                    "best": {"metrics": {split: {metric: score}}, "correct": {split: correct}}},
    }


def write_fixture_records(folder: Path) -> None:
    recs = [
        fake_record("rte", "finetune", 1, 60.0, [1, 1, 0, 0]),
        fake_record("rte", "finetune", 2, 64.0, [1, 0, 1, 0]),
        fake_record("rte", "finetune", 3, 62.0, [1, 1, 1, 0]),
        fake_record("mrpc", "finetune", 1, 85.5, [1, 1], metric="f1"),
        fake_record("rte", "nxm", 1, 58.0, [0, 1, 0, 0], rho=0.003),
        fake_record("rte", "nxm", 1, 99.0, [1, 1, 1, 1], rho=0.006),  # other rho: filtered out by `where`
        fake_record("rte", "nxm", 2, 70.0, [0, 0, 0, 0], rho=0.003, status="failed"),  # failed: ignored
        fake_record("mnli", "finetune", 1, 71.25, [1, 0, 1], split="dev_mm"),
    ]
    for r in recs:
        records.write_atomic(folder / f"{r['name']}.json", r)


def test_golden_table(tmp_path: Path) -> None:
    write_fixture_records(tmp_path / "records")
    write_tables(FIXTURES, tmp_path / "records", tmp_path / "results")
    assert (tmp_path / "results" / "golden.md").read_text() == (FIXTURES / "golden.md").read_text()
    assert (tmp_path / "results" / "golden.csv").read_text() == (FIXTURES / "golden.csv").read_text()


def test_aggregation_rules() -> None:
    assert aggregate([60.0, 64.0, 62.0], "best") == "64.00"
    assert aggregate([60.0, 64.0, 61.0], "median") == "61.00"
    assert aggregate([60.0, 64.0, 62.0], "mean_std") == "62.00 ± 2.00"
    assert aggregate([58.0], "mean_std") == "58.00 (n=1)"
    assert aggregate([], "mean_std") == "—"
    with pytest.raises(ConfigError, match="valid rules"):
        aggregate([1.0], "mode")


def test_committed_tables_regenerate_byte_identically(tmp_path: Path) -> None:
    """`python -m ftlab.tables` on the committed records reproduces every committed results/*.md and .csv."""
    written = write_tables(PROJECT_ROOT / "conf", PROJECT_ROOT / "results" / "records", tmp_path)
    assert written, "no experiment declares a table"
    for path in written:
        committed = PROJECT_ROOT / "results" / path.name
        assert committed.is_file(), f"results/{path.name} is not committed; run `python -m ftlab.tables`"
        assert path.read_text() == committed.read_text(), f"results/{path.name} is stale; run `python -m ftlab.tables`"


def test_records_from_reuses_another_experiments_runs_and_says_so() -> None:
    from omegaconf import OmegaConf

    from ftlab.tables import build_table

    experiment = OmegaConf.create({"experiment_name": "mine", "table": {
        "name": "t", "title": "T", "ours": "o", "rule": "mean_std", "records_from": ["dense"],
        "rows": [{"label": "FT", "method": "finetune"}], "columns": [{"task": "rte", "metric": "accuracy"}]}})
    dense = fake_record("rte", "finetune", 1, 60.0, [1, 0])
    other = fake_record("rte", "finetune", 2, 64.0, [1, 1])
    dense["experiment"], other["experiment"] = "dense", "unrelated"
    markdown, _ = build_table(experiment, [dense, other])
    assert "| FT | ours (n≤1) | 60.00 (n=1) |" in markdown  # the unrelated experiment's run is not counted
    assert "`dense` (results/records/dense/)" in markdown


def test_difference_rows_state_how_far_a_row_lands_from_its_baseline() -> None:
    from omegaconf import OmegaConf

    from ftlab.tables import build_table

    recs = [fake_record("rte", "finetune", 1, 60.0, [1]), fake_record("rte", "finetune", 2, 64.0, [1]),
            fake_record("rte", "nxm", 1, 58.5, [1]), fake_record("mrpc", "finetune", 1, 80.0, [1], metric="f1")]
    for r in recs:
        r["experiment"] = "mine"
    spec = {"experiment_name": "mine", "table": {
        "name": "t", "title": "T", "ours": "o", "rule": "mean_std",
        "rows": [{"label": "FT", "method": "finetune"}, {"label": "NxM", "method": "nxm"}],
        "columns": [{"task": "rte", "metric": "accuracy"}, {"task": "mrpc", "metric": "f1"}],
        "differences": [{"label": "NxM − FT", "row": "NxM", "minus": "FT"}]}}
    markdown, csv_text = build_table(OmegaConf.create(spec), recs)
    assert "| NxM − FT | ours, difference of means | -3.50 | — |" in markdown  # 58.5 − mean(60, 64); no NxM MRPC run
    assert "NxM − FT,\"ours, difference of means\",-3.50,—" in csv_text
    spec["table"]["differences"] = [{"label": "x", "row": "NxM", "minus": "Dense"}]
    with pytest.raises(ConfigError, match="no row labelled 'Dense'"):
        build_table(OmegaConf.create(spec), recs)
