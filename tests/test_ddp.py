"""trainer=ddp on two CPU processes (gloo) on tiny-bert: the run completes, rank 0 alone writes the record, and the dev
metrics are those of the whole dev set (every rank's shard gathered), as a single process computes them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab import records

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# 31 dev rows: odd, so Lightning's DistributedSampler pads one rank's shard with a repeated row. fp32 and a learning
# rate too small to move a prediction: both runs must score the same model on the same rows, whatever the batching.
SAME_MODEL = ("task=rte", "data.max_eval_samples=31", "trainer.precision=32-true", "optim.lr=1e-9")


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "run.py"), *tiny_overrides(tmp_path, *SAME_MODEL, *overrides),
            f"hydra.run.dir={tmp_path}/hydra"]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, f"pid {proc.pid}\n{out}")


def test_ddp_two_cpu_processes_match_one_process(tmp_path: Path) -> None:
    ddp = _run(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "train.batch_size=8")
    assert ddp.returncode == 0, ddp.stdout[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in ddp.stdout  # a second process did train
    assert ddp.stdout.count("record written:") == 1
    (record,) = records.iter_records(tmp_path / "ddp" / "records")
    assert [p.name for p in (tmp_path / "ddp" / "records").iterdir() if not p.name.startswith(".")] == \
        [f"{record['name']}.json"]
    assert f"pid {record['pid']}\n" == ddp.stdout[:ddp.stdout.index("\n") + 1]  # rank 0 (the launched process) wrote it
    assert record["status"] == "completed" and record["cost"]["world_size"] == 2
    assert record["cost"]["optimizer_steps"] == 3  # 48 rows, 2 ranks x 8 a step: the global batch of 16 below
    best = record["metrics"]["best"]
    assert len(best["predictions"]["dev"]) == 31  # the whole dev set, each row once

    single = _run(tmp_path / "one", "train.batch_size=16")
    assert single.returncode == 0, single.stdout[-3000:]
    (one,) = records.iter_records(tmp_path / "one" / "records")
    assert one["cost"]["optimizer_steps"] == 3
    assert best["predictions"]["dev"] == one["metrics"]["best"]["predictions"]["dev"]
    assert abs(best["metrics"]["dev"]["accuracy"] - one["metrics"]["best"]["metrics"]["dev"]["accuracy"]) < 1e-9


def test_ddp_in_a_multirun_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    args = [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(tmp_path, "task=rte", "trainer=ddp",
            "trainer.accelerator=cpu", "trainer.devices=2"), f"hydra.sweep.dir={tmp_path}/multirun"]
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Lightning would start the other ranks by re-running the whole sweep" in \
        done.stdout + done.stderr
    assert not list(records.iter_records(tmp_path / "records"))


GENERATION = ("backbone=tiny-gpt2", "task=e2e", "method=lora", "data.max_train_samples=16", "data.max_eval_samples=5",
              "task.decoding.max_new_tokens=4", "task.decoding.num_beams=2", "task.decoding.batch_size=2",
              "task.metrics=[bleu]", "train.epochs=1")


def test_ddp_generation_decodes_a_shard_per_rank_and_scores_the_whole_split(tmp_path: Path) -> None:
    ddp = _run(tmp_path / "ddp", *GENERATION, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "train.batch_size=4")
    assert ddp.returncode == 0, ddp.stdout[-3000:]
    (record,) = records.iter_records(tmp_path / "ddp" / "records")
    single = _run(tmp_path / "one", *GENERATION, "train.batch_size=8")
    assert single.returncode == 0, single.stdout[-3000:]
    (one,) = records.iter_records(tmp_path / "one" / "records")
    for split in ("dev", "test"):  # 5 unique inputs each, every one decoded (no rank's shard left out)
        texts = record["metrics"]["best"]["predictions"][split]
        assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
        assert texts == one["metrics"]["best"]["predictions"][split]
        assert record.best_score(split, "bleu") == pytest.approx(one.best_score(split, "bleu"), abs=1e-9)
