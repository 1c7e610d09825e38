"""Evidence II (the DSEE and DPS claims): the protocols compose into valid runs on every row x task, the calibrated
points reach the methods, the claims load against their tables, the figures render with no runs, the paper column
spans several paper tables, and DSEE phases without recovery epochs fail before anything loads."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ftlab.config import CONF_DIR, PROJECT_ROOT
from ftlab.errors import ConfigError
from ftlab.records import RunRecord, iter_records
from ftlab.report.gates import Gate, load_gate
from ftlab.report.protocol import Protocol, _override_value, sweep_points
from ftlab.report.tables import experiment_runs, experiments_with_tables, render_table
from ftlab.validation import validate_run_config

NEW_EXPERIMENTS = ["dsee_cpu", "dsee_cpu_calibration", "dps_cpu_full", "dps_cpu_full_calibration", "dps_cpu"]
EVALUATION = {"dsee_cpu": "dsee_cpu_calibration", "dps_cpu_full": "dps_cpu_full_calibration"}


@pytest.fixture(scope="module")
def compose_many():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def experiments():
    return {e.experiment_name: e for e in experiments_with_tables(CONF_DIR)}


@pytest.fixture(scope="module")
def empty_tables():
    """Every table with no runs (nothing to compose: no record is checked)."""
    return experiment_runs(CONF_DIR, [], lambda *args: [])


def seeds(experiment) -> list[int]:
    return [int(s) for s in str(experiment.hydra.sweeper.params.seed).split(",")]


def row_overrides(experiment, row, task: str) -> list[str]:
    """What Protocol.mismatches composes for a row and task (a record of the sweep's first seed)."""
    where = OmegaConf.to_container(row.get("where") or OmegaConf.create({}))
    return [f"experiment={experiment.experiment_name}", f"method={row.method}", f"task={task}",
            f"seed={seeds(experiment)[0]}", *[f"++{k}={_override_value(v)}" for k, v in sorted(where.items())]]


# -- protocols -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_EXPERIMENTS)
def test_every_row_and_task_composes_into_a_valid_run(name, experiments, compose_many) -> None:
    experiment = experiments[name]
    for row in experiment.table.rows:
        for task in dict.fromkeys(c.task for c in experiment.table.columns):
            cfg = compose_many(*row_overrides(experiment, row, task))
            validate_run_config(cfg)   # raises ConfigError naming the key
            assert cfg.method.name == row.method and cfg.task.name == task
            assert cfg.data.max_train_samples == (1000 if name == "dps_cpu" else None)   # full training sets
            assert cfg.backbone.name == "minilm"


def test_dsee_epochs_and_phases_per_row(experiments, compose_many) -> None:
    """Unpruned rows 8 epochs; pruned rows 8 + 4 (RTE 8 + 8) with phase 1 = 8; full fine-tuning 5."""
    experiment = experiments["dsee_cpu"]
    for row in experiment.table.rows:
        for task in ("cola", "rte"):
            cfg = compose_many(*row_overrides(experiment, row, task))
            epochs = cfg.train.epochs
            if row.method == "finetune":
                assert epochs == 5 and cfg.optim.lr == 5.0e-5
            elif cfg.method.prune == "none":
                assert epochs == 8, row.label
            else:
                assert cfg.method.phase1_epochs == 8 and epochs == (16 if task == "rte" else 12), row.label


def test_evaluation_seeds_exclude_the_calibration_seed(experiments) -> None:
    for evaluation, calibration in EVALUATION.items():
        assert seeds(experiments[calibration]) == [1]
        assert 1 not in seeds(experiments[evaluation])
    assert len(seeds(experiments["dps_cpu_full"])) >= 5 and len(seeds(experiments["dsee_cpu"])) >= 3


def test_dsee_full_fine_tuning_is_exactly_nxm_cpus_dense_run() -> None:
    """dsee_cpu counts nxm_cpu's dense runs (records_from): only if the two files compose the same run. If nxm_cpu's
    calibration freezes another lr, copy it into dsee_cpu.yaml's grid.calibrated.finetune."""
    protocol = Protocol(CONF_DIR)
    for task in ("cola", "stsb", "mrpc", "rte"):
        overrides = ["method=finetune", f"task={task}", "seed=2"]
        assert protocol.compose("dsee_cpu", overrides) == protocol.compose("nxm_cpu", overrides), task


def test_calibrated_points_reach_the_methods(compose_many) -> None:
    base = ["experiment=dps_cpu_full", "task=rte"]
    assert compose_many(*base, "method=mixout", "grid.calibrated.mixout.p=0.5").method.p == 0.5
    assert compose_many(*base, "method=dps_mix", "grid.calibrated.dps_mix.p=0.1").method.p == 0.1
    assert compose_many(*base, "method=dps", "grid.calibrated.dps_mix.p=0.1").method.p == 0.3   # Dense keeps its own
    assert compose_many(*base, "method=r4f", "grid.calibrated.r3f.lam=5.0").method.lam == 5.0   # R4F takes R3F's
    child = compose_many(*base, "method=child_tuning_d", "grid.calibrated.child_tuning_d.lr=1e-4")
    assert child.optim.lr == 1.0e-4 and compose_many(*base, "method=rdrop").optim.lr == 5.0e-5
    # without an experiment's grid the method YAMLs keep their defaults (the identity of every older run)
    plain = {m: compose_many(f"method={m}").method for m in ("mixout", "r3f", "reinit", "child_tuning_d", "rdrop", "dps")}
    assert (plain["mixout"].p, plain["r3f"].lam, plain["r3f"].noise, plain["reinit"].layers) == (0.1, 1.0, "uniform", 1)
    assert (plain["child_tuning_d"].reserve_p, plain["rdrop"].alpha, plain["dps"].p, plain["dps"].ur) == (0.3, 1.0, 0.3, 0.05)
    dsee = compose_many("method=dsee").method
    assert (dsee.r, dsee.num_sparse, dsee.prune, dsee.density, dsee.phase1_epochs) == (16, 16, "unstructured", 0.8, 5)


def test_calibration_rows_match_the_launch_commands(experiments, compose_many) -> None:
    """A calibration row pins method.* keys; the launch sets grid.calibrated.*: both must compose the same run."""
    protocol = Protocol(CONF_DIR)
    row = next(r for r in experiments["dps_cpu_full_calibration"].table.rows if r.label == "DPS Mix, p 0.1, ur 0.2")
    launched = compose_many("experiment=dps_cpu_full_calibration", "method=dps_mix", "task=rte", "seed=1",
                            "grid.calibrated.dps_mix.p=0.1", "grid.calibrated.dps_mix.ur=0.2")
    record = RunRecord(config=OmegaConf.to_container(launched, resolve=True))
    assert protocol.mismatches(experiments["dps_cpu_full_calibration"], row, "rte", record) == []
    lora = next(r for r in experiments["dsee_cpu_calibration"].table.rows if r.label == "LoRA, lr 2e-3")
    launched = compose_many("experiment=dsee_cpu_calibration", "method=dsee", "task=cola", "seed=1", "optim.lr=2e-3")
    record = RunRecord(config=OmegaConf.to_container(launched, resolve=True))
    assert protocol.mismatches(experiments["dsee_cpu_calibration"], lora, "cola", record) == []
    assert "optim.lr" in sweep_points(experiments["dsee_cpu_calibration"])


def test_committed_low_resource_runs_stay_on_protocol(experiments) -> None:
    """Making the method YAMLs read grid.calibrated moved no committed dps_cpu record off its protocol."""
    protocol = Protocol(CONF_DIR)
    experiment = experiments["dps_cpu"]
    rows = {(row.method, (row.get("where") or {}).get("method.variant")): row for row in experiment.table.rows}
    seen = set()
    for record in iter_records(PROJECT_ROOT / "results" / "records" / "dps_cpu"):
        method = record.method
        key = (method["name"], method.get("variant") if method["name"] == "dps" else None)
        if key in seen or record.task_name != "rte":
            continue
        seen.add(key)
        assert protocol.mismatches(experiment, rows[key], "rte", record) == [], record.name
    assert len(seen) == 9


def test_dsee_phases_without_recovery_fail_before_anything_loads(tmp_path: Path, monkeypatch, compose_many) -> None:
    import ftlab.backbones

    from conftest import tiny_overrides
    from ftlab.train import run

    monkeypatch.setattr(ftlab.backbones, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = compose_many(*tiny_overrides(tmp_path, "task=rte", "method=dsee", "method.phase1_epochs=2", "train.epochs=2"))
    with pytest.raises(ConfigError, match=r"dsee: phase 1 takes method.phase1_epochs=2 epochs, so train.epochs=2 "
                                          r"leaves none for recovery after pruning"):
        run(cfg)
    assert not (tmp_path / "records").exists() or not any((tmp_path / "records").iterdir())
    validate_run_config(compose_many(*tiny_overrides(tmp_path, "method=dsee", "method.prune=none", "train.epochs=1")))


# -- claims ----------------------------------------------------------------------------------------------------------
REQUIRED_CLAIMS = {
    "dsee.yaml": {"dsee-sparse-residual-r16", "dsee70-within-1pt-of-lora", "dsee-3heads-within-1pt-of-full-ft",
                  "dsee-delta-criterion-ge-random"},
    "dps.yaml": {"dps-dense-ge-vanilla", "dps-dense-std-le-vanilla", "dps-mix-ge-vanilla", "mixout-ge-vanilla",
                 "r3f-ge-vanilla", "child-tuning-d-ge-vanilla", "rdrop-ge-vanilla"},
}


@pytest.mark.parametrize("file", sorted(REQUIRED_CLAIMS))
def test_claims_load_and_name_rows_of_their_tables(file, empty_tables) -> None:
    from ftlab.report.claims import evaluate, load_claims

    claims = load_claims(CONF_DIR / "claims" / file, empty_tables)
    assert REQUIRED_CLAIMS[file] <= {c.id for c in claims}
    for claim in claims:
        experiment = empty_tables[claim.table][0]
        labels = {row.label for row in experiment.table.rows}
        assert {claim.a, claim.b} <= labels and set(claim.tasks) == {"cola", "stsb", "mrpc", "rte"}
        assert claim.quote and claim.source
        assert [evaluate(claim, t, empty_tables, Gate()).verdict for t in claim.tasks] == ["no runs"] * 4
    std = [c for c in claims if c.relation == "std(A) <= std(B)"]
    assert file != "dps.yaml" or {c.id for c in std} >= {"dps-dense-std-le-vanilla"}


def test_claims_count_for_the_two_papers(empty_tables) -> None:
    from ftlab.report.claims import load_claims

    rows = sum(len(c.tasks) for f in REQUIRED_CLAIMS for c in load_claims(CONF_DIR / "claims" / f, empty_tables))
    assert rows >= 16


# -- tables and figures ----------------------------------------------------------------------------------------------
def test_dsee_paper_column_spans_tables_1_3_and_7(empty_tables) -> None:
    experiment, runs = empty_tables["dsee_cpu"]
    markdown, _ = render_table(experiment, runs, load_gate())
    assert "| dW_l + dW_s (r=16) | paper | 60.31 | — | — | — | 86.52 | 70.04 |" in markdown        # Table 1
    assert "| DSEE 70% | paper | 58.69 | — | 89.08 | — | 86.27 | 71.48 |" in markdown             # Table 3
    assert "| DSEE 3 heads, random criterion | paper | — | — | — | — | — | 68.23 |" in markdown       # Table 7
    assert "Table 1: BERT-base" in markdown and "Table 7: BERT-base" in markdown
    assert "| DSEE 3 heads − Full FT | paper, difference | — | — | — | — | — | +4.2 |" in markdown  # 70.40 − 66.2


def test_dps_paper_column_is_empty_and_says_why(empty_tables) -> None:
    experiment, runs = empty_tables["dps_cpu_full"]
    markdown, _ = render_table(experiment, runs, load_gate())
    assert "NOT AVAILABLE" in markdown and "| Vanilla | paper | — | — | — | — |" in markdown


def test_figures_render_an_empty_state_deterministically(tmp_path: Path, empty_tables) -> None:
    from ftlab.report.plots.figures import write_figures

    spec = CONF_DIR / "report" / "figures.yaml"
    first = write_figures(spec, empty_tables, load_gate(), tmp_path / "one")
    second = write_figures(spec, empty_tables, load_gate(), tmp_path / "two")
    names = {p.name for p in first}
    assert {"dsee_cpu_params.png", "dsee_cpu_params.csv", "dps_cpu_full_seeds.png", "dps_cpu_seeds.png"} <= names
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
        if a.suffix == ".png":
            assert a.read_bytes().startswith(b"\x89PNG") and b"matplotlib" not in a.read_bytes()
    assert (tmp_path / "one" / "dsee_cpu_params.csv").read_text().count("\n") == 1   # the header alone


def test_figures_draw_the_runs_a_table_counts(tmp_path: Path) -> None:
    from ftlab.report.plots.figures import params_points, seeds_plot
    from ftlab.report.tables import collect_runs

    experiment = OmegaConf.create({"experiment_name": "syn", "table": {
        "name": "syn", "title": "T", "ours": "o", "rule": "mean_std",
        "rows": [{"label": "LoRA", "method": "lora"}, {"label": "DSEE", "method": "dsee"}],
        "columns": [{"task": "rte", "metric": "accuracy"}]}})

    def record(method: str, seed: int, score: float, kept: float | None) -> RunRecord:
        report = {} if kept is None else {"block_nonzero_percent": kept, "prune": "unstructured"}
        return RunRecord(name=f"{method}{seed}", status="completed", experiment="syn", method_report=report,
                         config={"task": {"name": "rte"}, "method": {"name": method}, "seed": seed},
                         metrics={"selection": {"split": "dev", "metric": "accuracy"},
                                  "best": {"metrics": {"dev": {"accuracy": score}}}})

    runs = collect_runs(experiment, [record("lora", 1, 60.0, None), record("lora", 2, 62.0, None),
                                     record("dsee", 1, 59.0, 70.1)], lambda *args: [])
    points = params_points(experiment, runs, Gate({("rte", "accuracy"): (52.7, 2.3)}))
    assert [(p["row"], p["kept_percent"], p["mean"], p["n"], p["did_not_learn"]) for p in points] == [
        ("LoRA", 100.0, 61.0, 2, False), ("DSEE", 70.1, 59.0, 1, False)]
    assert seeds_plot(experiment, runs, Gate(), tmp_path / "s.png")[0].stat().st_size > 0
