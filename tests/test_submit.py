"""GLUE submission: test predictions of unlabeled files (after training, or later from a completed run's best
checkpoint) and `python -m ftlab.submit` turning records into the server's TSVs and zip."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from ftlab import records, submit
from ftlab.train import run

from conftest import compose_config, tiny_overrides

ROWS = [("0", "A man is playing a guitar.", "A person plays music."),
        ("1", "The cat sat on the mat.", "A dog is barking."),
        ("2", "It rained all day in Paris.", "Paris was dry."),
        ("3", "She bought three apples.", "She bought fruit."),
        ("4", "The meeting was moved to Monday.", "The meeting is on Monday."),
        ("5", "Nobody came to the party.", "The party was crowded.")]


def _test_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.tsv").write_text("index\tsentence1\tsentence2\n" + "".join(f"{i}\t{a}\t{b}\n" for i, a, b in ROWS))
    return folder


def test_test_predictions_from_training_and_from_a_completed_runs_checkpoint(tmp_path: Path) -> None:
    folder = _test_file(tmp_path / "glue_test")
    predict = ("predict.splits=[test]", f"predict.dir={folder}")
    plain = tiny_overrides(tmp_path, "task=rte")
    plain[plain.index("train.save_checkpoints=false")] = "train.save_checkpoints=true"

    first = run(compose_config(plain))  # a run launched without predict.splits
    assert "test_predictions" not in first
    again = run(compose_config([*plain, *predict]))  # same run: reused, its best checkpoint predicts
    assert again["name"] == first["name"] and again["finished"] == first["finished"]  # not retrained
    entry = again["test_predictions"]["test"]
    assert entry["rows"] == 6 and entry["index"] == [r[0] for r in ROWS] and set(entry["predictions"]) <= {0, 1}
    assert "best-on-dev weights" in entry["weights"] and entry["weights"].endswith("best.ckpt)")
    path = tmp_path / "records" / f"{first['name']}.json"
    assert records.read(path)["test_predictions"] == again["test_predictions"]  # written back under the lock

    trained = run(compose_config([*plain, *predict, "seed=2"]))  # predicted right after training
    assert trained["test_predictions"]["test"]["rows"] == 6

    out = tmp_path / "submission"
    assert submit.main([str(tmp_path / "records"), "--out", str(out)]) == 0
    with zipfile.ZipFile(out / "glue_submission.zip") as bundle:
        assert bundle.namelist() == ["RTE.tsv"]
        lines = bundle.read("RTE.tsv").decode().splitlines()
    assert lines[0] == "index\tprediction" and [line.split("\t")[0] for line in lines[1:]] == [r[0] for r in ROWS]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "not_entailment"}
    top = max(again.best_score(), trained.best_score())  # two RTE records: one best on dev is submitted
    submitted = [r.test_predictions["test"]["predictions"] for r in (again, trained) if r.best_score() == top]
    labels = ["entailment", "not_entailment"]
    assert [labels.index(line.split("\t")[1]) for line in lines[1:]] in submitted


def _fake(tmp_path: Path, task: str, kind: str, labels: list | None, predicted: dict, dev: float) -> Path:
    record = {"name": f"{task}-x-{dev}", "config_hash": "h", "status": "completed",
              "config": {"task": {"name": task, "kind": kind, "local": {"label_values": labels}}},
              "metrics": {"selection": {"split": "dev", "metric": "m"}, "best": {"metrics": {"dev": {"m": dev}}}},
              "test_predictions": {s: {"rows": len(p), "index": [str(i) for i in range(len(p))], "predictions": p}
                                   for s, p in predicted.items()}}
    path = tmp_path / f"{record['name']}.json"
    path.write_text(json.dumps(record))
    return path


def test_server_files_label_names_mnli_and_stsb(tmp_path: Path, capsys) -> None:
    mnli = _fake(tmp_path, "mnli", "classification", ["entailment", "neutral", "contradiction"],
                 {"test_matched": [0, 1, 2], "test_mismatched": [2, 2], "ax": [1]}, 80.0)
    stsb = _fake(tmp_path, "stsb", "regression", None, {"test": [-0.4, 2.71828, 5.6]}, 85.0)
    worse = _fake(tmp_path, "stsb", "regression", None, {"test": [1.0, 1.0, 1.0]}, 10.0)
    out = tmp_path / "out"
    assert submit.main([str(mnli), str(worse), str(stsb), "--out", str(out)]) == 0
    with zipfile.ZipFile(out / "glue_submission.zip") as bundle:
        assert sorted(bundle.namelist()) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "STS-B.tsv"]
        text = {name: bundle.read(name).decode().splitlines()[1:] for name in bundle.namelist()}
    assert text["MNLI-m.tsv"] == ["0\tentailment", "1\tneutral", "2\tcontradiction"]
    assert text["MNLI-mm.tsv"] == ["0\tcontradiction", "1\tcontradiction"] and text["AX.tsv"] == ["0\tneutral"]
    assert text["STS-B.tsv"] == ["0\t0.000", "1\t2.718", "2\t5.000"]  # the better record on dev, clipped to [0, 5]
    assert "missing: CoLA.tsv" in capsys.readouterr().err


def test_records_without_test_predictions_are_refused_with_the_fix(tmp_path: Path, capsys) -> None:
    path = _fake(tmp_path, "rte", "classification", ["entailment", "not_entailment"], {}, 60.0)
    assert submit.main([str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "predict.splits=[test]" in err and "nothing to submit" in err


def test_predict_splits_are_checked_before_training(tmp_path: Path) -> None:
    from ftlab.errors import ConfigError, DataError

    with pytest.raises(DataError, match="predict.splits: test: file not found"):
        run(compose_config(tiny_overrides(tmp_path, "task=rte", "predict.splits=[test]", f"predict.dir={tmp_path}")))
    with pytest.raises(ConfigError, match="labelled splits"):
        run(compose_config(tiny_overrides(tmp_path, "task=rte", "predict.splits=[dev]")))
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").glob("*.json"))
