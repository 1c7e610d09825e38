"""The claims engine (ftlab.report.claims): verdicts on synthetic runs, the Welch interval against a hand computation,
malformed claims, the std bootstrap, and the trivial scores behind the did-not-learn gate."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftlab.errors import ConfigError, DataError
from ftlab.records import RunRecord
from ftlab.report.build import write_claims
from ftlab.report.claims import evaluate_all, interval_verdict, load_claims, render_csv
from ftlab.report.gates import Gate
from ftlab.report.intervals import bootstrap_std_difference, welch_interval
from ftlab.report.tables import collect_runs

EXPERIMENT = OmegaConf.create({"experiment_name": "syn", "table": {
    "name": "syn", "title": "T", "ours": "o", "rule": "mean_std",
    "rows": [{"label": "Sparse", "method": "sparse"}, {"label": "Dense", "method": "dense"}],
    "columns": [{"task": "rte", "metric": "accuracy"}, {"task": "mrpc", "metric": "f1"}, {"task": "cola", "metric": "mcc"}]}})


def run(task: str, method: str, seed: int, score: float, metric: str) -> RunRecord:
    return RunRecord(
        name=f"{task}-{method}-s{seed}", config_hash="x", status="completed", experiment="syn",
        config={"task": {"name": task}, "method": {"name": method}, "seed": seed},
        metrics={"selection": {"split": "dev", "metric": metric}, "best": {"metrics": {"dev": {metric: score}}}})


def tables_of(scores: dict[tuple[str, str], list[float]]) -> dict:
    """(task, method) -> per-seed scores, as the tables dict the claims engine reads (every record on-protocol)."""
    metric = {"rte": "accuracy", "mrpc": "f1", "cola": "mcc"}
    records = [run(task, method, seed, value, metric[task])
               for (task, method), values in scores.items() for seed, value in enumerate(values, start=1)]
    return {"syn": (EXPERIMENT, collect_runs(EXPERIMENT, records, lambda e, row, task, r: []))}


def claims_file(tmp_path: Path, *entries: dict, name: str = "syn.yaml") -> Path:
    path = tmp_path / "claims" / name
    path.parent.mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create({"paper": "P", "table": "syn", "rows": {"sparse": "Sparse", "dense": "Dense"},
                                     "claims": list(entries)}), path)
    return path


def claim(**fields) -> dict:
    return {"id": "c1", "quote": "q", "A": "sparse", "B": "dense", "tasks": ["rte"], "relation": "A - B >= c",
            "c": 0.0, **fields}


def verdicts(tmp_path: Path, scores: dict, gate: Gate = Gate(), **fields) -> list[str]:
    claims_file(tmp_path, claim(**fields))
    return [o.verdict for o in evaluate_all(tmp_path / "claims", tables_of(scores), gate)]


def test_verdicts_on_synthetic_runs(tmp_path: Path) -> None:
    high, low = [70.0, 71.0, 72.0], [60.0, 61.0, 62.0]
    assert verdicts(tmp_path, {("rte", "sparse"): high, ("rte", "dense"): low}) == ["holds"]
    assert verdicts(tmp_path, {("rte", "sparse"): low, ("rte", "dense"): high}) == ["does not hold"]
    assert verdicts(tmp_path, {("rte", "sparse"): [60.0, 65.0, 70.0], ("rte", "dense"): [61.0, 64.0, 69.0]}) \
        == ["inconclusive"]
    assert verdicts(tmp_path, {("rte", "sparse"): [75.0], ("rte", "dense"): low}) == ["inconclusive"]   # n = 1
    assert verdicts(tmp_path, {("rte", "sparse"): high}) == ["no runs"]                                   # no B runs
    gate = Gate({("rte", "accuracy"): (50.0, 12.0)})                                                     # 62 to clear
    assert verdicts(tmp_path, {("rte", "sparse"): high, ("rte", "dense"): low}, gate) == ["did not learn"]
    assert verdicts(tmp_path, {("rte", "sparse"): high, ("rte", "dense"): low}, Gate({("rte", "accuracy"): (50.0, 10.0)})) \
        == ["holds"]                                                                                     # 61 clears 60
    # a claimed margin moves the boundary: A - B = 10, interval 10 ± 2.78 * sqrt(2/3) = [7.73, 12.27]
    assert verdicts(tmp_path, {("rte", "sparse"): high, ("rte", "dense"): low}, c=13.0) == ["does not hold"]
    assert verdicts(tmp_path, {("rte", "sparse"): high, ("rte", "dense"): low}, c=12.0) == ["inconclusive"]


def test_other_relations(tmp_path: Path) -> None:
    near = {("rte", "sparse"): [60.0, 60.5, 61.0], ("rte", "dense"): [60.2, 60.4, 60.9]}
    assert verdicts(tmp_path, near, relation="|A - B| <= c", c=2.0) == ["holds"]
    assert verdicts(tmp_path, near, relation="|A - B| <= c", c=0.1) == ["inconclusive"]
    far = {("rte", "sparse"): [70.0, 70.5, 71.0], ("rte", "dense"): [60.2, 60.4, 60.9]}
    assert verdicts(tmp_path, far, relation="|A - B| <= c", c=1.0) == ["does not hold"]
    # 98% of dense: 0.98 * 60.5 = 59.29; sparse 59.9-60.1 keeps it, 55 does not
    ratio = {("rte", "sparse"): [59.9, 60.0, 60.1], ("rte", "dense"): [60.4, 60.5, 60.6]}
    assert verdicts(tmp_path, ratio, relation="A / B >= r", c=None, r=0.98) == ["holds"]
    ratio[("rte", "sparse")] = [54.9, 55.0, 55.1]
    assert verdicts(tmp_path, ratio, relation="A / B >= r", c=None, r=0.98) == ["does not hold"]
    steady = {("rte", "sparse"): [60.0, 60.1, 60.0, 60.1], ("rte", "dense"): [50.0, 60.0, 70.0, 55.0]}
    assert verdicts(tmp_path, steady, relation="std(A) <= std(B)", c=None) == ["holds"]
    swapped = {("rte", "sparse"): steady[("rte", "dense")], ("rte", "dense"): steady[("rte", "sparse")]}
    assert verdicts(tmp_path, swapped, relation="std(A) <= std(B)", c=None) == ["does not hold"]


def test_welch_interval_matches_a_hand_computation() -> None:
    # a = 1,2,3,4: mean 2.5, s² 5/3; b = 2,4,6: mean 4, s² 4. se² = 5/12 + 4/3 = 1.75;
    # df = 1.75² / ((5/12)²/3 + (4/3)²/2) = 3.2347; t(0.975, 3.2347) = 3.0557; half-width 3.0557 * sqrt(1.75) = 4.0423
    estimate, low, high = welch_interval([1, 2, 3, 4], [2, 4, 6])
    assert estimate == -1.5
    assert low == pytest.approx(-5.5423, abs=1e-3) and high == pytest.approx(2.5423, abs=1e-3)
    # A - 0.5 B: 2.5 - 2 = 0.5; se² = 5/12 + 0.25 * 4/3 = 0.75; df = 0.5625 / ((5/12)²/3 + (1/3)²/2) = 4.9592;
    # t(0.975, 4.9592) = 2.5770; half-width 2.5770 * sqrt(0.75) = 2.2317
    estimate, low, high = welch_interval([1, 2, 3, 4], [2, 4, 6], r=0.5)
    assert estimate == 0.5
    assert low == pytest.approx(-1.7317, abs=1e-3) and high == pytest.approx(2.7317, abs=1e-3)
    assert welch_interval([3.0, 3.0], [1.0, 1.0]) == (2.0, 2.0, 2.0)   # no spread: the point itself
    with pytest.raises(ValueError):
        welch_interval([1.0], [1.0, 2.0])


def test_interval_verdict_boundaries() -> None:
    assert interval_verdict(0.0, 1.0, (0.0, float("inf"))) == "holds"          # closed region
    assert interval_verdict(-0.1, 1.0, (0.0, float("inf"))) == "inconclusive"
    assert interval_verdict(-2.0, -0.1, (0.0, float("inf"))) == "does not hold"
    assert interval_verdict(1.5, 2.0, (-1.0, 1.0)) == "does not hold"


def test_bootstrap_is_deterministic() -> None:
    a, b = [1.0, 2.0, 4.0, 8.0], [3.0, 3.5, 3.0, 3.2]
    assert bootstrap_std_difference(a, b) == bootstrap_std_difference(a, b)
    estimate, low, high = bootstrap_std_difference(a, b)
    assert low <= estimate <= high and low > 0   # a's seeds spread far more than b's


@pytest.mark.parametrize("fields, message", [
    ({"relation": "A >> B"}, "unknown relation 'A >> B'"),
    ({"A": None}, "missing A"),
    ({"B": "ADMM"}, "table 'syn' has no row 'ADMM'"),
    ({"c": None}, "needs a value for 'c'"),
    ({"table": "nope"}, "no experiment with a table named 'nope'"),
    ({"tasks": ["sst2"]}, "no metric for \\['sst2'\\]"),
])
def test_malformed_claim_names_id_and_file(tmp_path: Path, fields: dict, message: str) -> None:
    path = claims_file(tmp_path, claim(id="bad-claim", **fields), name="broken.yaml")
    with pytest.raises(ConfigError, match=message) as err:
        load_claims(path, tables_of({}))
    assert "'bad-claim'" in str(err.value) and "broken.yaml" in str(err.value)


def test_per_claim_metric_and_split_come_from_the_table(tmp_path: Path) -> None:
    claims_file(tmp_path, claim(tasks=["rte", "mrpc"]))
    outcomes = evaluate_all(tmp_path / "claims", tables_of({("mrpc", "sparse"): [80.0, 81.0],
                                                            ("mrpc", "dense"): [70.0, 71.0]}), Gate())
    assert [(o.task, o.metric, o.verdict) for o in outcomes] == [("rte", "accuracy", "no runs"), ("mrpc", "f1", "holds")]
    assert "c1,P,syn.yaml,syn,Sparse,Dense,A - B >= c,0,mrpc,f1,,2,2,80.5000,70.5000,10.0000," in render_csv(outcomes)


def test_claims_files_are_written_and_deterministic(tmp_path: Path) -> None:
    claims_file(tmp_path, claim(tasks=["rte", "mrpc", "cola"]))
    tables = tables_of({("rte", "sparse"): [70.0, 71.0, 72.0], ("rte", "dense"): [60.0, 61.0, 62.0],
                        ("mrpc", "sparse"): [80.0]})
    first = write_claims(tmp_path / "claims", tables, Gate(), tmp_path / "one")
    second = write_claims(tmp_path / "claims", tables, Gate(), tmp_path / "two")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    markdown = first[0].read_text()
    assert "rte: **holds**, mrpc: **no runs**, cola: **no runs**" in markdown
    assert "Welch" in markdown and b"matplotlib" not in first[2].read_bytes()


# --- trivial scores (the gate's baseline) -----------------------------------------------------------------------


def test_trivial_scores_need_the_data_folder(tmp_path: Path) -> None:
    from ftlab.report.trivial import compute_csv

    with pytest.raises(DataError, match="FTLAB_DATA_DIR") as err:
        compute_csv(["rte"], tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value)


def test_committed_trivial_scores_match_the_data() -> None:
    """results/trivial_scores.csv is what `python -m ftlab.report.trivial` computes from the GLUE folder (when it is here)."""
    from ftlab.report.gates import GATES_YAML, gated_tasks
    from ftlab.report.trivial import TRIVIAL_CSV, compute_csv, default_data_dir

    if not (default_data_dir() / "glue").is_dir():
        pytest.skip(f"no GLUE data at {default_data_dir()} (FTLAB_DATA_DIR)")
    assert compute_csv(gated_tasks(GATES_YAML), default_data_dir()) == TRIVIAL_CSV.read_text()


def test_committed_gate_reads_as_the_issue_states() -> None:
    from ftlab.report.gates import load_gate

    gate = load_gate()
    assert gate.threshold("cola", "mcc") == pytest.approx(10.0)
    assert gate.threshold("mrpc", "f1") == pytest.approx(83.0, abs=0.01)
    assert gate.threshold("stsb", "pearson") == gate.threshold("stsb", "spearman") == pytest.approx(50.0)
    assert 55.0 <= gate.threshold("rte", "accuracy") < 55.0 + 100 / 277          # no RTE dev score between
    trivial_sst2 = gate.levels[("sst2", "accuracy")][0]
    assert gate.threshold("sst2", "accuracy") == pytest.approx(trivial_sst2 + 5.0)
    assert gate.fails("cola", "mcc", [10.0]) and not gate.fails("cola", "mcc", [10.5]) and not gate.fails("cola", "mcc", [])
