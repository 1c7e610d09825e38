"""Tables are a pure function of the records: a golden rendering, the aggregation rules, byte-identical regeneration
(tables, claims, plots), protocol filtering and the did-not-learn gate."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ftlab import records
from ftlab.config import CONF_DIR, PROJECT_ROOT
from ftlab.errors import ConfigError
from ftlab.records import RunRecord
from ftlab.report.gates import Gate
from ftlab.report.tables import aggregate, write_tables

FIXTURES = Path(__file__).parent / "fixtures"
COMMITTED_RECORDS = PROJECT_ROOT / "results" / "records"


def accept_all(experiment, row, task, record) -> list[str]:
    """A protocol check that counts every record: for tests of rendering alone."""
    return []


def fake_record(task: str, method: str, seed: int, score: float, correct: list[int], rho: float | None = None,
                status: str = "completed", split: str = "dev", metric: str = "accuracy") -> RunRecord:
    method_cfg = {"name": method, **({"rho": rho} if rho is not None else {})}
    return RunRecord(
        name=f"{task}-{method}-{seed}-{rho}", config_hash=f"{task}{method}{seed}{rho}", status=status,
        experiment="golden", config={"task": {"name": task}, "method": method_cfg, "seed": seed},
        metrics={"selection": {"split": split, "metric": metric},
                 "best": {"metrics": {split: {metric: score}}, "correct": {split: correct}}},
    )


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
        records.write_atomic(folder / f"{r.name}.json", r)


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


def test_committed_results_regenerate_byte_identically(tmp_path: Path) -> None:
    """`python -m ftlab.tables` on the committed records reproduces every committed results/*.md and .csv, claims.md,
    claims.csv, claims.png and the per-epoch plots, byte for byte (the PNGs carry no version or date)."""
    from ftlab.report.build import write_report

    written = write_report(PROJECT_ROOT / "conf", COMMITTED_RECORDS, tmp_path)
    names = {path.name for path in written}
    assert {"claims.md", "claims.csv", "claims.png", "nxm_vs_asp_epochs.png", "wtacrs_cpu.md"} <= names
    for path in written:
        committed = PROJECT_ROOT / "results" / path.name
        assert committed.is_file(), f"results/{path.name} is not committed; run `python -m ftlab.tables`"
        assert path.read_bytes() == committed.read_bytes(), f"results/{path.name} is stale; run `python -m ftlab.tables`"
    for png in (p for p in written if p.suffix == ".png"):
        assert b"matplotlib" not in png.read_bytes(), f"{png.name} carries matplotlib's version: not reproducible"


def test_records_from_reuses_another_experiments_runs_and_says_so() -> None:
    from omegaconf import OmegaConf

    from ftlab.report.tables import build_table

    experiment = OmegaConf.create({"experiment_name": "mine", "table": {
        "name": "t", "title": "T", "ours": "o", "rule": "mean_std", "records_from": ["dense"],
        "rows": [{"label": "FT", "method": "finetune"}], "columns": [{"task": "rte", "metric": "accuracy"}]}})
    dense = fake_record("rte", "finetune", 1, 60.0, [1, 0])
    other = fake_record("rte", "finetune", 2, 64.0, [1, 1])
    dense["experiment"], other["experiment"] = "dense", "unrelated"
    markdown, _ = build_table(experiment, [dense, other], protocol=accept_all)
    assert "| FT | ours (n≤1) | 60.00 (n=1) |" in markdown  # the unrelated experiment's run is not counted
    assert "`dense` (results/records/dense/)" in markdown


def two_row_table(recs: list[RunRecord], **table: object) -> dict:
    """A table spec "t" of experiment "mine" (rows FT = finetune, NxM = nxm; columns RTE acc, MRPC F1) over `recs`."""
    for r in recs:
        r["experiment"] = "mine"
    return {"experiment_name": "mine", "table": {
        "name": "t", "title": "T", "ours": "o", "rule": "mean_std",
        "rows": [{"label": "FT", "method": "finetune"}, {"label": "NxM", "method": "nxm"}],
        "columns": [{"task": "rte", "metric": "accuracy"}, {"task": "mrpc", "metric": "f1"}], **table}}


def test_difference_rows_state_how_far_a_row_lands_from_its_baseline() -> None:
    from omegaconf import OmegaConf

    from ftlab.report.tables import build_table

    recs = [fake_record("rte", "finetune", 1, 60.0, [1]), fake_record("rte", "finetune", 2, 64.0, [1]),
            fake_record("rte", "nxm", 1, 58.5, [1]), fake_record("mrpc", "finetune", 1, 80.0, [1], metric="f1")]
    spec = two_row_table(recs, differences=[{"label": "NxM − FT", "row": "NxM", "minus": "FT"}])
    markdown, csv_text = build_table(OmegaConf.create(spec), recs, protocol=accept_all)
    assert "| NxM − FT | ours, difference of means | -3.50 | — |" in markdown  # 58.5 − mean(60, 64); no NxM MRPC run
    assert "NxM − FT,\"ours, difference of means\",-3.50,—" in csv_text
    spec["table"]["differences"] = [{"label": "x", "row": "NxM", "minus": "Dense"}]
    with pytest.raises(ConfigError, match="no row labelled 'Dense'"):
        build_table(OmegaConf.create(spec), recs, protocol=accept_all)


# --- protocol filtering (ftlab.report.protocol) -------------------------------------------------------------------------


def committed(experiment: str, prefix: str) -> list[RunRecord]:
    return [r for r in records.iter_records(COMMITTED_RECORDS / experiment) if r.name.startswith(prefix)]


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ")]


def test_a_debug_record_changes_no_cell_and_is_named_as_excluded() -> None:
    """A debug run (64 training rows, 1 epoch) dropped into glue_dense_cpu's folder is not the table's protocol."""
    from ftlab.report.tables import build_table, experiments_with_tables

    experiment = next(e for e in experiments_with_tables(CONF_DIR) if e.experiment_name == "glue_dense_cpu")
    runs = committed("glue_dense_cpu", "rte-")
    assert len(runs) == 3
    debug = copy.deepcopy(runs[0])
    debug["config"]["data"]["max_train_samples"] = 64
    debug["config"]["train"]["epochs"] = 1
    debug["name"], debug["config_hash"] = "rte-finetune-minilm-s9-debug", "debug"
    debug["config"]["seed"] = 9
    debug["metrics"]["best"]["metrics"]["dev"]["accuracy"] = 99.0   # would move the RTE cell if it counted
    before, _ = build_table(experiment, runs)
    after, after_csv = build_table(experiment, runs + [debug])
    assert table_lines(after) == table_lines(before)
    assert "57.40 ± 1.81" in after and "99.00" not in after_csv
    assert "Excluded as off-protocol, 1 record: `glue_dense_cpu/rte-finetune-minilm-s9-debug.json` (" in after
    assert "data.max_train_samples: protocol None, run 64" in after and "train.epochs: protocol 3, run 1" in after
    assert "No record was excluded." in before


def test_records_from_runs_are_checked_against_this_tables_protocol() -> None:
    """glue_dense_cpu's RTE runs count as wtacrs_cpu's Full fine-tuning; one with another lr does not."""
    from ftlab.report.tables import build_table, experiments_with_tables

    experiment = next(e for e in experiments_with_tables(CONF_DIR) if e.experiment_name == "wtacrs_cpu")
    runs = committed("glue_dense_cpu", "rte-")
    other_lr = copy.deepcopy(runs[0])
    other_lr["config"]["optim"]["lr"] = 1.0e-4
    other_lr["name"], other_lr["config"]["seed"] = "rte-finetune-minilm-s4-otherlr", 4
    markdown, _ = build_table(experiment, runs + [other_lr])
    assert "| Full fine-tuning | ours (n≤3) | 57.40 ± 1.81 | — | — | — |" in markdown
    assert "`glue_dense_cpu/rte-finetune-minilm-s4-otherlr.json` (optim.lr: protocol 5e-05, run 0.0001)" in markdown


def test_protocol_differences_rules() -> None:
    from ftlab.report.protocol import differences

    protocol = {"seed": 1, "method": {"name": "wtacrs", "sample_scores": None, "budget": 0.3}, "train": {"epochs": 3}}
    old = {"seed": 2, "method": {"name": "wtacrs", "budget": 0.3}, "train": {"epochs": 3}}
    assert differences(protocol, old, {"method.sample_scores"}) == []       # predates the key, `where` says null
    assert differences(protocol, old, set()) == ["method.sample_scores: protocol None, run lacks it"]
    extra = copy.deepcopy(protocol) | {"threads": 2}
    assert differences(protocol, extra, set()) == ["threads: run 2, protocol lacks it"]
    assert differences(protocol, {**protocol, "seed": 7}, set()) == []      # seeds are the restarts a cell pools


def test_sweep_points_take_the_records_value() -> None:
    """A row pinned to a swept key (dsee_cpu's `grid.variant`) counts a record only if the variant's values compose
    into its config: a LoRA run is the LoRA row's, not DSEE 70%'s (the difference is named by its method keys)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ftlab.report.protocol import Protocol, sweep_points
    from ftlab.report.tables import experiments_with_tables

    experiment = next(e for e in experiments_with_tables(CONF_DIR) if e.experiment_name == "dsee_cpu")
    assert "grid.variant" in sweep_points(experiment)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        launched = compose("config", overrides=["experiment=dsee_cpu", "method=dsee", "task=rte", "seed=3",
                                                "grid.variant=lora"])
    lora = RunRecord(config=OmegaConf.to_container(launched, resolve=True))
    rows = {row.label: row for row in experiment.table.rows}
    protocol = Protocol(CONF_DIR)
    assert protocol.mismatches(experiment, rows["LoRA (dW_l, r=16)"], "rte", lora) == []
    assert "method.num_sparse: protocol 16, run 0" in protocol.mismatches(experiment, rows["DSEE 70%"], "rte", lora)


# --- did-not-learn gate (ftlab.report.gates) ----------------------------------------------------------------------------


def test_gate_renders_did_not_learn_and_names_the_runs() -> None:
    from omegaconf import OmegaConf

    from ftlab.report.tables import build_table

    recs = [fake_record("rte", "finetune", 1, 54.0, [1]), fake_record("rte", "finetune", 2, 56.0, [1]),
            fake_record("rte", "nxm", 1, 61.0, [1]), fake_record("mrpc", "nxm", 1, 10.0, [1], metric="f1")]
    spec = two_row_table(recs)
    gate = Gate({("rte", "accuracy"): (50.0, 5.0)}, "gates")
    markdown, csv_text = build_table(OmegaConf.create(spec), recs, protocol=accept_all, gate=gate)
    assert "| FT | ours (n≤2) | did not learn (55.00 ± 1.41) | — |" in markdown   # mean 55 does not clear 55
    assert "| NxM | ours (n≤1) | 61.00 (n=1) | 10.00 (n=1) |" in markdown          # MRPC F1 is not gated here
    assert "Failed: FT / RTE acc (mean 55.00 ≤ 50.00 + 5 = 55.00: `mine/rte-finetune-1-None.json`, " \
           "`mine/rte-finetune-2-None.json`)." in markdown
    assert "did not learn (55.00 ± 1.41)" in csv_text
    clean, _ = build_table(OmegaConf.create(spec), recs, protocol=accept_all, gate=Gate({("rte", "accuracy"): (50.0, 4.9)}))
    assert "| FT | ours (n≤2) | 55.00 ± 1.41 |" in clean and "No cell failed." in clean


def test_protocol_composes_inside_a_callers_hydra_and_gives_it_back() -> None:
    from hydra import compose, initialize_config_dir

    from ftlab.report.protocol import Protocol

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        protocol = Protocol(CONF_DIR).compose("glue_dense_cpu", ["method=finetune", "task=rte", "seed=1"])
        assert compose("config", overrides=["task=mrpc"]).task.name == "mrpc"   # the caller's Hydra still works
    assert protocol["optim"]["lr"] == 5.0e-5 and "paths" not in protocol and "table" not in protocol


def test_records_that_still_carry_reporting_config_are_refused_with_the_fix(tmp_path: Path) -> None:
    """A record from before conf/report/ (copied in from a campaign of older code) has a name of the old identity:
    tables name it and the migration instead of silently excluding it from every protocol."""
    write_fixture_records(tmp_path / "records")
    old = fake_record("rte", "finetune", 4, 61.0, [1, 0, 0, 0])
    old["config"]["task"]["paper"] = {"nxm": {"lr": [5e-5]}}
    records.write_atomic(tmp_path / "records" / f"{old['name']}.json", old)
    with pytest.raises(ConfigError, match=r"1 record\(s\) predate conf/report/.*python -m ftlab.migrate"):
        write_tables(FIXTURES, tmp_path / "records", tmp_path / "results")


def test_every_table_spec_names_an_experiment_and_no_experiment_carries_one() -> None:
    """Reporting config lives beside the run config, never in it: conf/report/tables/<experiment>.yaml for each
    experiment that has a table; no experiment file declares `table:` (it would enter every run's config)."""
    from omegaconf import OmegaConf

    from ftlab.report.tables import experiments_with_tables

    specs = {path.stem for path in (CONF_DIR / "report" / "tables").glob("*.yaml")}
    assert specs == {e.experiment_name for e in experiments_with_tables(CONF_DIR)}
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        assert "table" not in OmegaConf.load(path), f"{path}: its table belongs in conf/report/tables/{path.name}"
