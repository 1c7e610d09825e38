"""Training-step overhead of ASP and NxM-ADMM over plain fine-tuning, on MiniLM with real RTE batches.

    python benchmarks/nm_overhead.py --threads 2 --warmup 1 --steps 4 --rounds 1   (about 2-3 minutes on 2 idle cores)

Each method trains through the real FineTuneModule + Lightning loop (bf16 autocast, batch 32, the same fixed RTE
batches in the same order, from the same weights); the per-step wall time is taken around each training batch (forward,
backward, hooks, optimizer) and the median over the timed steps after warm-up is compared. Methods alternate within
each round so that a load change on a shared machine hits all of them. NxM's ADMM iteration (projection + dual update,
once per epoch by default) runs outside the step and is timed on its own, then amortised over RTE's steps per epoch.
Targets: ASP <= 1.05x, NxM <= 1.10x the fine-tuning step.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from ftlab.backbones import load_model, load_tokenizer
from ftlab.config import CONF_DIR, register_resolvers
from ftlab.data.module import TaskDataModule
from ftlab.module import FineTuneModule
from ftlab.train import build_method

METHODS = ("finetune", "asp", "nxm")
TARGETS = {"asp": 1.05, "nxm": 1.10}


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def config(method: str, data_dir: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"method={method}", "task=rte", "backbone=minilm", f"paths.data_dir={data_dir}"])


def fixed_batches(cfg: Any, count: int) -> list[dict[str, torch.Tensor]]:
    tokenizer = load_tokenizer(cfg.backbone)
    cache = Path(cfg.paths.cache_dir) / "tokenized" if cfg.paths.cache_dir else None
    data = TaskDataModule(cfg.task, cfg.data, tokenizer, Path(cfg.paths.data_dir), cache, 32, cfg.seed)
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            return batches
    return batches


def time_method(method_name: str, data_dir: str, batches: list[dict[str, torch.Tensor]]) -> tuple[list[float], float | None]:
    cfg = config(method_name, data_dir)
    torch.manual_seed(0)
    model = load_model(cfg.backbone, num_labels=cfg.task.num_labels)
    method = build_method(cfg)
    method.setup(model, cfg.backbone)
    module = FineTuneModule(model, method, cfg.task, cfg.optim, cfg.backbone)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, max_epochs=1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    iteration_seconds = None
    if hasattr(method, "admm_iteration"):
        start = time.perf_counter()
        method.admm_iteration(module, trainer.global_step)
        iteration_seconds = time.perf_counter() - start
    return timer.seconds, iteration_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every run")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per method, alternating methods")
    parser.add_argument("--data-dir", default=os.environ.get("FTLAB_DATA_DIR", str(Path(CONF_DIR).parent.parent / "shared" / "data")))
    args = parser.parse_args(argv)
    register_resolvers()
    torch.set_num_threads(args.threads)
    batches = fixed_batches(config("finetune", args.data_dir), args.warmup + args.steps)
    tokens = [int(b["attention_mask"].shape[1]) for b in batches]
    print(f"MiniLM-L6-H384, RTE train batches of 32 (padded lengths {tokens}), bf16 autocast, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps x {args.rounds} rounds", flush=True)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    iteration: list[float] = []
    for _ in range(args.rounds):
        for name in METHODS:
            seconds, admm = time_method(name, args.data_dir, batches)
            print(f"  {name}: step seconds {[round(t, 3) for t in seconds]}", flush=True)
            times[name] += seconds[args.warmup:]
            if admm is not None:
                iteration.append(admm)
    base = statistics.median(times["finetune"])
    steps_per_epoch = math.ceil(2490 / 32)  # RTE train rows / batch: one ADMM iteration per epoch
    for name in METHODS:
        median = statistics.median(times[name])
        line = f"{name:9s} median step {median:.3f} s  (min {min(times[name]):.3f}, n={len(times[name])})  ratio {median / base:.3f}x"
        if name in TARGETS:
            line += f"  target <= {TARGETS[name]:.2f}x: {'met' if median / base <= TARGETS[name] else 'NOT met'}"
        print(line)
    if iteration:
        per_iteration = statistics.median(iteration)
        amortised = (statistics.median(times["nxm"]) + per_iteration / steps_per_epoch) / base
        print(f"nxm ADMM iteration (projection + dual update, all 36 layers): {per_iteration:.3f} s; amortised over "
              f"RTE's {steps_per_epoch} steps per epoch the NxM step is {amortised:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
