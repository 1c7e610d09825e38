"""Run records: written atomically, reused when complete, failures recorded, never overwritten by another config."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab import records
from ftlab.errors import FtlabError, NonFiniteLossError
from ftlab.records import RunRecord, Selection, metrics_section
from ftlab.train import run

from conftest import DATA_DIR, compose_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_record_has_the_promised_fields(run_tiny) -> None:
    r = run_tiny("task=mrpc")
    assert r["status"] == "completed"
    assert r["config"]["task"]["name"] == "mrpc" and r["config"]["backbone"]["name"] == "tiny-bert"
    assert r["metrics"]["selection"] == {"split": "dev", "metric": "f1", "rule": "best epoch on dev"}
    assert len(r["metrics"]["history"]) == 1 and r["metrics"]["best"]["epoch"] == 0
    assert set(r["metrics"]["best"]["metrics"]["dev"]) == {"f1", "accuracy"}
    assert len(r["metrics"]["best"]["correct"]["dev"]) == 32  # per-example right/wrong for agreement summaries
    assert r["parameters"]["total"] >= r["parameters"]["trainable"] > 0 and r["parameters"]["nonzero"] > 0
    assert r["cost"]["samples_per_s"] > 0 and r["cost"]["train_samples"] == 48 and r["cost"]["optimizer_steps"] == 3
    assert r["cost"]["cpu_peak_rss_mb"] > 0 and r["cost"]["cpu_peak_rss_scope"] == "run"  # reset per run (Linux)
    saved = r["cost"]["saved_tensors"]  # the first training step's activations, measured for every method
    assert saved["bytes"] > 0 and saved["measured_on"]["batch"] == 16 and saved["largest"][0]["bytes"] > 0
    assert r["environment"]["torch"] and "git_commit" in r["environment"]
    # eager attention on CPU (backbones.attention_for) with ftlab.kernels' dropout
    assert r["environment"]["attn_implementation"] == "ftlab_eager"
    assert r["environment"]["kernels"] == {"fast_dropout_modules": 8, "fast_attention_dropout": True}
    assert r["environment"]["adamw_fused"] is True


def test_first_step_activations_are_measured_alike_for_every_method(run_tiny) -> None:
    plain = run_tiny("task=rte")["cost"]["saved_tensors"]["bytes"]
    rdrop = run_tiny("task=rte", "method=rdrop")["cost"]["saved_tensors"]["bytes"]  # one forward of the batch twice
    assert 1.8 * plain < rdrop < 2.2 * plain


def _epoch(epoch: int, f1: float, accuracy: float) -> dict:
    return {"epoch": epoch, "step": 3 * (epoch + 1), "metrics": {"dev": {"f1": f1, "accuracy": accuracy}},
            "predictions": {"dev": [epoch]}, "correct": {"dev": [epoch % 2]}}


def test_run_record_reads_and_builds_its_fields_in_one_place() -> None:
    config = {"task": {"name": "mrpc", "selection": {"split": "dev", "metric": "f1"}}, "method": {"name": "nxm"},
              "seed": 3, "paths": {"data_dir": "/machine/specific"}}
    history = [_epoch(0, 70.0, 60.0), _epoch(1, 80.0, 55.0), _epoch(2, 75.0, 65.0)]
    record = RunRecord.start("mrpc-nxm-x", "abc", "exp", config, {"train": "f00"})
    assert record.status == "running" and record.resumable and not record.completed
    assert "paths" not in record.config and record.data_files == {"train": "f00"}  # no machine paths in a record
    assert record.selection is None and record.best_score() is None and record.history == []
    record.complete({"metrics": metrics_section(history, record.selection_of_config())})
    assert record.completed and record.selection == Selection("dev", "f1") and str(record.selection) == "dev/f1"
    assert record.metrics["selection"]["rule"] == "best epoch on dev" and record.metrics["last"]["epoch"] == 2
    assert record.best["epoch"] == 1 and record.best_score() == 80.0 and record.best_score("dev", "accuracy") == 55.0
    assert record.best_score("test") is None and record.best_correct() == [1]
    assert record.epoch_scores(None, "accuracy") == [(0, 60.0), (1, 55.0), (2, 65.0)]
    assert (record.task_name, record.method_name, record.seed, record.file) == ("mrpc", "nxm", 3, "exp/mrpc-nxm-x.json")
    stopped = RunRecord.start("mrpc-nxm-y", "abd", "exp", config, {})
    stopped.end("interrupted", "interrupted by SIGTERM", history=history[:1])
    assert stopped.status == "interrupted" and stopped.resumable and stopped.best_score() == 70.0
    assert stopped.error == "interrupted by SIGTERM" and "finished" in stopped and "traceback" not in stopped


def test_committed_records_read_and_write_back_byte_identically(tmp_path: Path) -> None:
    """RunRecord is the JSON object as stored: every committed record round-trips unchanged."""
    paths = sorted((ROOT / "results" / "records").rglob("*.json"))
    assert paths
    for path in paths:
        record = records.read(path)
        assert isinstance(record, RunRecord) and record.config_hash
        copy = tmp_path / path.parent.name / path.name
        records.write_atomic(copy, record)
        assert copy.read_bytes() == path.read_bytes(), path


def test_completed_run_is_skipped_when_launched_again(run_tiny) -> None:
    first = run_tiny("task=rte")
    again = run_tiny("task=rte")
    assert again["started"] == first["started"] and again["finished"] == first["finished"]


def test_nan_loss_stops_the_run_and_records_failure(tmp_path: Path) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, "task=rte", "method._target_=nan_loss.NanLoss", "method.name=nan_loss"))
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        run(cfg)
    (path,) = (tmp_path / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "NonFiniteLossError" in record["error"]


def test_missing_data_fails_before_any_record_is_written(tmp_path: Path) -> None:
    bad = compose_config(tiny_overrides(tmp_path, "task=rte", "paths.data_dir=/nonexistent"))
    with pytest.raises(FtlabError, match="data file not found: /nonexistent/glue/RTE/train.tsv"):
        run(bad)
    assert not list((tmp_path / "records").glob("*.json"))  # no identity without the data: nothing to record


def test_failed_run_is_retried_not_skipped(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, "task=rte", "method._target_=nan_loss.NanLoss", "method.name=nan_loss")
    with pytest.raises(NonFiniteLossError):
        run(compose_config(overrides))
    (path,) = (tmp_path / "records").glob("*.json")
    first = json.loads(path.read_text())
    with pytest.raises(NonFiniteLossError):
        run(compose_config(overrides))
    assert json.loads(path.read_text())["started"] >= first["started"]
    assert json.loads(path.read_text())["status"] == "failed"


def test_write_refuses_to_overwrite_a_different_config(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    records.write_atomic(path, {"config_hash": "aaa", "status": "completed"})
    with pytest.raises(FtlabError, match="different config"):
        records.write_atomic(path, {"config_hash": "bbb", "status": "running"})
    assert json.loads(path.read_text())["config_hash"] == "aaa"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_same_seed_gives_same_metrics(tmp_path: Path) -> None:
    a = run(compose_config(tiny_overrides(tmp_path / "a", "task=stsb", "seed=3")))
    b = run(compose_config(tiny_overrides(tmp_path / "b", "task=stsb", "seed=3")))
    c = run(compose_config(tiny_overrides(tmp_path / "c", "task=stsb", "seed=4")))
    assert a["metrics"]["best"]["predictions"] == b["metrics"]["best"]["predictions"]
    assert a["metrics"]["best"]["predictions"] != c["metrics"]["best"]["predictions"]


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(tmp_path, *overrides),
            f"hydra.sweep.dir={tmp_path}/multirun"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_multirun_basic_launcher_runs_every_point_and_survives_a_failure(tmp_path: Path) -> None:
    """Two tasks x two seeds in one process; then a sweep where QNLI fails (no train.tsv staged) and WNLI goes on."""
    done = _multirun(tmp_path, "task=rte,wnli", "seed=1,2")
    assert done.returncode == 0, done.stderr[-2000:]
    failing = _multirun(tmp_path, "task=qnli,wnli", "seed=5")
    assert failing.returncode == 1, failing.stderr[-2000:]  # a failed job fails the sweep, after the others ran
    assert "job 0 failed: DataError: data file not found" in failing.stdout + failing.stderr  # the summary names it
    status = sorted((r["config"]["task"]["name"], r["status"]) for r in records.iter_records(tmp_path / "records"))
    assert status.count(("rte", "completed")) == 2 and status.count(("wnli", "completed")) == 3


def test_multirun_joblib_launcher(tmp_path: Path) -> None:
    done = _multirun(tmp_path, "task=wnli", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(r["config"]["seed"] for r in records.iter_records(tmp_path / "records")) == [1, 2]


def test_identity_is_the_run_groups_without_class_paths_and_is_recomputable_from_a_record() -> None:
    from omegaconf import OmegaConf, open_dict

    from ftlab.config import identity_config, identity_of

    cfg = compose_config(["experiment=glue_dense_cpu", "task=rte"])
    assert "table" not in cfg and "paper" not in cfg.task  # reporting config (conf/report/) is not run config
    before = records.record_name(identity_config(cfg))
    cfg.method._target_ = "ftlab.moved.elsewhere.FineTune"  # a class moved to another module: the same run
    with open_dict(cfg):
        cfg.task.datamodule = {"_target_": "ftlab.tasks.SomeDataModule", "_partial_": True}  # names code only
    cfg.experiment_name, cfg.ui.log_every_s, cfg.train.save_checkpoints = "renamed", 5, False
    assert records.record_name(identity_config(cfg)) == before
    cfg.optim.lr = 1e-3
    assert records.record_name(identity_config(cfg)) != before
    stored = OmegaConf.to_container(cfg, resolve=True)
    stored.pop("paths")  # what a record keeps (records.RunRecord.start)
    assert identity_of(stored) == identity_config(cfg)


def _old_format(config: dict, data_files: dict | None, name: str) -> dict:
    """A record as written before reporting config left the run config: its config carries the experiment's table
    spec and the tasks' paper settings, its method a class path since moved; named by the identity of that time."""
    old = {**config, "table": {"name": "t", "ours": "text"},
           "task": {**config["task"], "paper": {"nxm": {"lr": [5e-5], "epochs": 10}}},
           "method": {**config["method"], "_target_": "ftlab.old.place.FineTune"}}
    return {"name": name, "config_hash": name.rsplit("-", 1)[1], "status": "completed", "config": old,
            "metrics": {"best": None}, **({"data_files": data_files} if data_files else {})}


def test_migration_rekeys_old_records_to_the_name_a_launch_computes_today(tmp_path: Path) -> None:
    """Records from before the data fingerprint (no `data_files`) and from before conf/report/ (campaigns still
    running the old code): `ftlab.migrate` gives each the name a launch of its config computes today, once."""
    from omegaconf import OmegaConf

    from ftlab.migrate import migrate_folder
    from ftlab.train import run_paths

    folder = tmp_path / "records"
    launches = {}
    for seed, with_data in ((7, False), (8, True)):
        cfg = compose_config(tiny_overrides(tmp_path, "task=rte", f"seed={seed}"))
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("paths")
        name, path, identity = run_paths(cfg)
        old_name = f"rte-finetune-tiny-bert-s{seed}-0ld0ld0ld0ld"
        old = _old_format(config, identity["data_files"] if with_data else None, old_name)
        records.write_atomic(folder / f"{old['name']}.json", old)
        launches[seed] = (cfg, config, old, path, identity)
    moved = dict(migrate_folder(folder, DATA_DIR, tmp_path / "cache"))
    assert len(moved) == 2
    for cfg, config, old, path, identity in launches.values():
        assert moved[folder / f"{old['name']}.json"] == path  # the name a launch of that config computes today
        new = records.read(path)
        # table and task.paper gone; the rest as it ran (the class path of that time kept)
        assert new["config"] == {**config, "method": {**config["method"], "_target_": "ftlab.old.place.FineTune"}}
        assert new["data_files"] == identity["data_files"] and new["config_hash"] == records.config_hash(identity)
        unchanged = ("name", "config_hash", "data_files", "config")
        assert {k: v for k, v in new.items() if k not in unchanged} == \
            {k: v for k, v in old.items() if k not in unchanged}
    assert migrate_folder(folder, DATA_DIR, tmp_path / "cache") == []  # idempotent
    cfg, config, old, path, _ = launches[7]
    records.write_atomic(folder / f"{old['name']}.json", old)  # copied in again from a campaign's folder
    assert migrate_folder(folder, DATA_DIR, tmp_path / "cache") == [(folder / f"{old['name']}.json", path)]
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(launch[3].name for launch in launches.values())
    assert not (folder / ".locks").exists()  # the migration's run locks leave nothing behind
    assert "started" not in run(cfg)  # the launch found the migrated record and reused it: nothing re-ran


def test_migration_skips_a_live_run_and_moves_a_run_folder_with_its_resume_checkpoint(tmp_path: Path) -> None:
    """A record whose run holds its lock is left alone (named); once free, its output folder follows the new name
    and its resume checkpoint is re-keyed, so relaunching an interrupted run still resumes."""
    import torch
    from omegaconf import OmegaConf

    from ftlab.checkpoints import RESUME_FILE, ResumeCheckpoint, resume_point
    from ftlab.migrate import migrate_folder
    from ftlab.run_lock import RunLock
    from ftlab.train import run_paths

    cfg = compose_config(tiny_overrides(tmp_path, "task=rte", "seed=9"))
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("paths")
    name, path, identity = run_paths(cfg)
    old = {**_old_format(config, identity["data_files"], "rte-finetune-tiny-bert-s9-0ld0ld0ld0ld"),
           "status": "interrupted"}
    old_path = tmp_path / "records" / f"{old['name']}.json"
    records.write_atomic(old_path, old)
    checkpoint = tmp_path / "runs" / old["name"] / "checkpoints" / RESUME_FILE
    checkpoint.parent.mkdir(parents=True)
    saved_for = {ResumeCheckpoint.__qualname__: {"config_hash": old["config_hash"]}}
    torch.save({"epoch": 1, "global_step": 6, "callbacks": saved_for}, checkpoint)
    skipped: list[Path] = []
    with RunLock(old_path):  # the old code's launch of that run is still going
        assert migrate_folder(tmp_path / "records", DATA_DIR, runs_dir=tmp_path / "runs", skipped=skipped) == []
    assert skipped == [old_path] and records.read(old_path) == old
    assert migrate_folder(tmp_path / "records", DATA_DIR, runs_dir=tmp_path / "runs") == [(old_path, path)]
    moved = tmp_path / "runs" / name / "checkpoints" / RESUME_FILE
    assert not checkpoint.exists() and resume_point(moved, records.config_hash(identity)) == \
        {"checkpoint": str(moved), "epoch": 1, "step": 6}


def test_committed_records_are_at_the_current_identity() -> None:
    """Every committed record was re-keyed (`python -m ftlab.migrate`): no reporting config in its stored config, and
    its name and hash are those of today's identity of that config and data (what a launch of it computes)."""
    from ftlab.config import reporting_keys, run_identity

    committed = list(records.iter_records(ROOT / "results" / "records"))
    assert len(committed) >= 100
    for record in committed:
        identity = run_identity(record["config"], record["data_files"])
        assert not reporting_keys(record["config"]), record["name"]
        assert (record["name"], record["config_hash"]) == (records.record_name(identity), records.config_hash(identity))
