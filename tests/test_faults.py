"""Fault injection: two real processes on one config, a full disk, kill -9 / SIGTERM / Ctrl-C and resume, damaged
records and data. Every case asserts what happened to the record, not only that nothing crashed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlab import records
from ftlab.errors import FtlabError
from ftlab.run_lock import RunLock, RunLocked
from ftlab.status import folder_status
from ftlab.train import run, run_paths

from conftest import DATA_DIR, compose_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# 3 epochs of 4 steps, 0.15 s a step: long enough to signal a run between two validated epochs
SLOW = ("task=rte", "method=finetune", "method._target_=slow_method.Slow", "train.epochs=3", "data.max_train_samples=64",
        "train.batch_size=16")


def _launch(tmp_path: Path, *overrides: str, gate: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if gate is not None:
        env["FTLAB_TEST_GATE"] = str(gate)  # slow_method.Slow waits at each step until this file exists
    args = [sys.executable, str(ROOT / "run.py"), *tiny_overrides(tmp_path, *overrides),
            f"hydra.run.dir={tmp_path}/hydra"]
    # SIGINT back to its default in the child: a shell starts background jobs (nohup, `&`) with SIGINT ignored, which
    # the child would inherit, and Python then installs no KeyboardInterrupt handler
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _record(tmp_path: Path, *overrides: str) -> tuple[Path, dict | None]:
    _, path, _ = run_paths(compose_config(tiny_overrides(tmp_path, *overrides)))
    return path, records.read(path)


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def _resume_checkpoint(tmp_path: Path) -> Path:
    found = list((tmp_path / "runs").glob("*/checkpoints/resume.ckpt"))
    return found[0] if found else tmp_path / "none"


# -- concurrency ------------------------------------------------------------------------------------------------------
def test_second_launch_of_a_running_config_skips_and_names_the_holder(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = _launch(tmp_path, *SLOW, gate=gate)  # held at its first step until the second launch has answered
    path, _ = _record(tmp_path, *SLOW)
    _wait_for(lambda: path.exists())
    second = _launch(tmp_path, *SLOW)
    out_second, _ = second.communicate(timeout=300)
    gate.touch()
    out_first, _ = first.communicate(timeout=300)
    assert second.returncode == 0, out_second[-2000:]
    assert f"already running (pid {first.pid}" in out_second
    assert first.returncode == 0, out_first[-2000:]
    record = records.read(path)
    assert record["status"] == "completed" and len(record["metrics"]["history"]) == 3


def test_lock_is_refused_to_a_second_holder_and_released_when_its_process_dies(tmp_path: Path) -> None:
    path = tmp_path / "records" / "x.json"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ftlab.run_lock import RunLock\n"
        f"with RunLock({str(path)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
        RunLock(path).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(path):  # the kernel released the dead holder's lock
        pass


def test_cold_tokenisation_cache_shared_by_two_processes(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from omegaconf import OmegaConf\n"
        "from ftlab.backbones import load_tokenizer; from ftlab.tasks.classification.glue import read_local_split\n"
        "from ftlab.tasks.classification.tokenize import tokenize_rows\n"
        f"task = OmegaConf.load({str(ROOT / 'conf/task/rte.yaml')!r})\n"
        f"backbone = OmegaConf.load({str(ROOT / 'conf/backbone/tiny-bert.yaml')!r})\n"
        f"rows = read_local_split(Path({str(DATA_DIR)!r}), task, 'train')\n"
        f"d = tokenize_rows(rows, load_tokenizer(backbone), ['sentence1', 'sentence2'], 128, Path({str(tmp_path)!r}))\n"
        "print(len(d))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outputs]
    assert outputs[0][0] == outputs[1][0] == "2490\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left behind


# -- the final write ----------------------------------------------------------------------------------------------------
def test_failed_final_write_leaves_a_failed_record_naming_the_path(tmp_path: Path, monkeypatch) -> None:
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first write is `running`; the second, the completed record, hits a full disk
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = compose_config(tiny_overrides(tmp_path, "task=rte"))
    with pytest.raises(records.RecordError, match=r"could not write run record .*\.json: No space left on device"):
        run(cfg)
    (path,) = (tmp_path / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and str(path) in record["error"]
    assert record["metrics"]["history"]  # the validated epoch is kept
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# -- wrong reuse --------------------------------------------------------------------------------------------------------
def test_other_data_is_another_run(tmp_path: Path) -> None:
    other = tmp_path / "data"
    shutil.copytree(DATA_DIR / "glue" / "RTE", other / "glue" / "RTE")
    name_real, _, _ = run_paths(compose_config(tiny_overrides(tmp_path, "task=rte")))
    name_copy, _, ident = run_paths(compose_config(tiny_overrides(tmp_path, "task=rte", f"paths.data_dir={other}")))
    assert name_copy == name_real  # same bytes elsewhere: the same run (records are compared across machines)
    dev = other / "glue" / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text().replace("not_entailment", "entailment", 1))
    name_edit, _, ident = run_paths(compose_config(tiny_overrides(tmp_path, "task=rte", f"paths.data_dir={other}")))
    assert name_edit != name_real
    assert ident["data_files"]["splits"]["dev"][0]["file"] == "glue/RTE/dev.tsv"


# -- interruption and resume ------------------------------------------------------------------------------------------
def _interrupt(tmp_path: Path, sig: int, code: int) -> tuple[Path, dict]:
    proc = _launch(tmp_path, *SLOW)
    _wait_for(lambda: _resume_checkpoint(tmp_path).exists())  # one epoch validated and checkpointed
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-2000:]
    path, record = _record(tmp_path, *SLOW)
    assert record["status"] == "interrupted" and record["metrics"]["history"], record.get("error")
    return path, record


def test_sigint_records_interrupted_and_exits_130(tmp_path: Path) -> None:
    """Ctrl-C comes through Lightning as another exception than SIGTERM; the resume after it is SIGTERM's (below)."""
    _, record = _interrupt(tmp_path, signal.SIGINT, 130)
    assert "SIGINT" in record["error"]


def test_sigterm_records_interrupted_and_relaunch_resumes_to_the_same_result(tmp_path: Path) -> None:
    reference = run(compose_config(tiny_overrides(tmp_path / "ref", *SLOW)))
    path, record = _interrupt(tmp_path, signal.SIGTERM, 143)
    validated = len(record["metrics"]["history"])
    again = _launch(tmp_path, *SLOW)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-2000:]
    record = records.read(path)
    assert record["status"] == "completed" and record["resumed"]["previous_status"] == "interrupted"
    assert record["resumed"]["epoch"] >= validated - 1 and record["resumed"]["step"] > 0
    assert [h["epoch"] for h in record["metrics"]["history"]] == [0, 1, 2]  # history carried over, nothing repeated
    assert record["metrics"]["best"]["predictions"] == reference["metrics"]["best"]["predictions"]
    ours = [h["metrics"]["dev"]["accuracy"] for h in record["metrics"]["history"]]
    assert ours == [h["metrics"]["dev"]["accuracy"] for h in reference["metrics"]["history"]]
    assert not _resume_checkpoint(tmp_path).exists()  # completed: the resume state is deleted


def test_kill_9_leaves_a_stale_record_reported_interrupted_and_resumed(tmp_path: Path) -> None:
    proc = _launch(tmp_path, *SLOW)
    _wait_for(lambda: _resume_checkpoint(tmp_path).exists())
    proc.kill()
    proc.wait()
    path, record = _record(tmp_path, *SLOW)
    assert record["status"] == "running" and records.state_of(record, path) == "interrupted"  # no lock holder
    counts, notes = folder_status(tmp_path / "records")
    assert counts == {"interrupted": 1} and "no process holds its lock" in notes[0]
    again = _launch(tmp_path, *SLOW)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-2000:]
    record = records.read(path)
    assert record["status"] == "completed" and record["resumed"]["previous_status"] == "running"
    assert len(record["metrics"]["history"]) == 3


# -- damaged files ------------------------------------------------------------------------------------------------------
def test_corrupt_record_at_a_launching_config_is_moved_aside(tmp_path: Path) -> None:
    path, _ = _record(tmp_path, "task=rte")
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "compl')  # truncated
    record = run(compose_config(tiny_overrides(tmp_path, "task=rte")))
    assert record["status"] == "completed" and records.read(path)["status"] == "completed"
    (kept,) = path.parent.glob(f"{path.name}.corrupt-*")
    assert kept.read_text() == '{"status": "compl'


def test_tables_skip_a_corrupt_record_naming_it(tmp_path: Path, caplog) -> None:
    good = {"config_hash": "a", "status": "completed", "config": {}}
    records.write_atomic(tmp_path / "good.json", good)
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    skipped: list[Path] = []
    assert list(records.iter_records(tmp_path, skipped)) == [good]
    assert skipped == [tmp_path / "bad.json"] and "bad.json" in caplog.text


def test_write_refuses_to_replace_a_completed_record_of_another_config(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    records.write_atomic(path, {"config_hash": "a", "status": "completed"})
    with pytest.raises(FtlabError, match="different config"):
        records.write_atomic(path, {"config_hash": "b", "status": "failed"})
    assert records.read(path)["status"] == "completed"
