"""Cluster launchers on tiny runs: submitit's local executor (the code path of hydra/launcher=submitit_slurm, minus
SLURM) and a local Ray instance. Each job runs in its own process; records, locks, the end-of-sweep table and the
non-zero exit of a sweep with a failed job must hold there as with the basic launcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ftlab import records
from ftlab.config import CONF_DIR, identity_config
from ftlab.sweep import OUTCOMES

from conftest import compose_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# QNLI has no train.tsv in ../shared/data: its job fails (before any record) while the others complete
FAILING_TASK = "qnli"


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(tmp_path, *overrides),
            f"hydra.sweep.dir={tmp_path}/multirun"]
    return subprocess.run(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)


def _outcomes(tmp_path: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in (tmp_path / "multirun" / OUTCOMES).glob("*.json")}


def _completed(tmp_path: Path) -> list[tuple[str, int]]:
    return sorted((r["config"]["task"]["name"], r["config"]["seed"]) for r in records.iter_records(tmp_path / "records")
                  if r["status"] == "completed")


def test_launcher_configs_compose_and_decide_nothing_about_a_run() -> None:
    partitions = {}
    for launcher, target in (("slurm_cpu", "SlurmLauncher"), ("slurm_gpu", "SlurmLauncher"),
                             ("submitit_local", "LocalLauncher"), ("submitit_slurm", "SlurmLauncher")):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)
        partitions[launcher] = cfg.hydra.launcher.get("partition")
    assert partitions == {"slurm_cpu": "cpu", "slurm_gpu": "gpu", "submitit_local": None, "submitit_slurm": None}
    name = records.record_name(identity_config(compose_config([])))
    assert records.record_name(identity_config(compose_config(["hydra/launcher=slurm_gpu"]))) == name


def test_submitit_local_jobs_write_records_and_a_failed_job_fails_the_sweep(tmp_path: Path) -> None:
    """Two jobs complete with their records; the third fails: the others finish, the sweep exits 1 and names it.
    (Two processes on one run identity: tests/test_faults.py; under this launcher it is the same OS lock.)"""
    done = _multirun(tmp_path, "hydra/launcher=submitit_local", f"task=rte,wnli,{FAILING_TASK}")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert _completed(tmp_path) == [("rte", 1), ("wnli", 1)]
    assert [o["status"] for _, o in sorted(_outcomes(tmp_path).items())] == ["completed", "completed", "failed"]
    assert "job 2 failed: DataError: data file not found" in out and "1 of 3 jobs failed" in out
    assert not list((tmp_path / "records" / ".locks").glob("*.owner"))  # every job released its lock
    assert list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))  # submitit kept each job's log


def test_ray_local_jobs_write_records_and_fail_the_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    done = _multirun(tmp_path, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                     "+hydra.launcher.ray.init.include_dashboard=false", f"task=rte,wnli,{FAILING_TASK}")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert _completed(tmp_path) == [("rte", 1), ("wnli", 1)]
    assert [o["status"] for _, o in sorted(_outcomes(tmp_path).items())] == ["completed", "completed", "failed"]
    assert "job 2 failed: DataError" in out and "1 of 3 jobs failed" in out
