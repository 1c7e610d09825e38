"""Progress wherever the output goes: log lines when it is not a terminal, the Rich bar's 1-based epochs, the one-table
summary at the end of a run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from ftlab.ui.progress import ProgressBar, duration, epoch_text

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _run_redirected(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "run.py"), *tiny_overrides(tmp_path, "task=rte", *overrides),
            f"hydra.run.dir={tmp_path}/hydra"]
    return subprocess.run(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def test_duration_and_one_based_epochs() -> None:
    assert [duration(s) for s in (None, 4.4, 372, 3720)] == ["?", "4s", "6m12s", "1h02m"]
    one_epoch = SimpleNamespace(max_epochs=1, current_epoch=0)
    assert epoch_text(one_epoch) == "1/1"
    assert epoch_text(SimpleNamespace(max_epochs=-1, current_epoch=2)) == "3"  # no epoch limit (max_steps bounds it)
    bar = ProgressBar()
    bar._trainer = one_epoch  # what Lightning sets in setup()
    assert bar._get_train_description(0).strip() == "Epoch 1/1"


def test_log_lines_and_summary_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    # 6 steps of 0.15 s (tests/slow_method.py) and a line every 0.3 s: periodic lines appear however fast the machine
    done = _run_redirected(tmp_path, "trainer.enable_progress_bar=true", "ui.log_every_s=0.3", "train.batch_size=8",
                           "method._target_=slow_method.Slow",
                           env={"PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    assert "training rte-finetune-tiny-bert-s1-" in out and "1 epoch(s), 6 steps" in out
    lines = [line for line in out.splitlines() if "· step " in line]
    assert lines, out[-3000:]
    assert all(" epoch 1/1 · " in line and "samples/s" in line and "loss " in line and "ETA " in line for line in lines)
    assert "validated epoch 1/1: dev/accuracy" in out
    assert "Epoch 0/0" not in out and "━" not in out  # no bar frame in a log file
    for noise in ("litlogger", "LeafSpec", "smaller than the logging interval", "weights_only"):  # ftlab.ui.quiet
        assert noise not in out, noise
    header = next(i for i, line in enumerate(out.splitlines()) if line.rstrip().endswith("job  status      metric"
                                                                                          "               best     min  run"))
    row = out.splitlines()[header + 1]
    assert "completed" in row and "dev/accuracy" in row and "rte-finetune-tiny-bert-s1-" in row


def test_ui_keys_decide_nothing_about_a_run() -> None:
    from ftlab import records
    from ftlab.config import identity_config

    from conftest import compose_config

    names = {records.record_name(identity_config(compose_config(["task=rte", *extra])))
             for extra in ([], ["ui.log_every_s=5"], ["trainer.enable_progress_bar=false"])}
    assert len(names) == 1


def test_trainer_max_epochs_is_refused_naming_train_epochs() -> None:
    for arg, key in (("trainer.max_epochs=1", "train.epochs=1"), ("+trainer.max_steps=5", "train.max_steps=5")):
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=rte", arg], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and f"e.g. {key}" in done.stderr, done.stderr[-2000:]
