"""Telemetry as Lightning callbacks: what a run measures about itself, for its record's `cost` and `environment`.

* `Throughput`: the fit's wall time, time spent inside training batches (forward, backward, optimizer), samples and
  real tokens seen, optimizer steps (cost.fit_seconds, train_seconds, train_samples, samples_per_s, tokens_per_s,
  optimizer_steps, and world_size under DDP).
* `PeakMemory`: the run's peak memory: CUDA's allocator peak (cost.cuda_max_allocated_mb) or, on CPU, Linux's peak
  resident set (cost.cpu_peak_rss_mb, cpu_peak_rss_scope: "run" when it could be reset for this run, else "process").
* `SavedActivations`: what the first training step's forward and loss saved for backward (cost.saved_tensors, the
  step's activation peak, measured the same way for every method: ftlab.telemetry.saved_tensors), whole and per module the
  method watches (Method.watched_modules), handed to the method too (Method.on_saved_tensors).
* `Environment`: library versions, commit, device and threads, and what the fit used: the attention implementation and
  whether AdamW ran fused (environment).

Each callback's window opens when it is made (train.py makes them right before the Trainer, so the data module's setup,
which Lightning runs before any callback hook, counts) and closes at on_fit_end; `result` then holds its record fields.
`RunTelemetry` makes the four together and assembles the record sections.
"""
from __future__ import annotations

import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import transformers
from torch import nn

from ..config import PROJECT_ROOT
from .saved_tensors import SavedTensorMeter, SavedTensors


class Throughput(pl.Callback):
    """Training time spent inside training batches (forward, backward, optimizer), samples and real tokens seen, and
    the fit's wall time. Under DDP every rank trains on an equal shard: samples of all ranks, in this rank's time."""

    def __init__(self) -> None:
        self.seconds, self.samples, self.tokens, self._start = 0.0, 0, 0, 0.0
        self._made = time.perf_counter()
        self.result: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        self.samples += int(batch["labels"].shape[0])
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        world = max(1, trainer.world_size)
        self.result = {
            "fit_seconds": time.perf_counter() - self._made, "train_seconds": self.seconds,
            "train_samples": self.samples * world,
            "samples_per_s": self.samples * world / self.seconds if self.seconds else None,
            **({"world_size": world} if world > 1 else {}),
            "tokens_per_s": self.tokens * world / self.seconds if self.seconds else None,
            "optimizer_steps": trainer.global_step,
        }


def reset_peak_memory() -> bool:
    """Start this run's peak-memory count. CUDA: the allocator's peak. CPU: Linux's peak resident set (VmHWM), reset by
    writing 5 to /proc/self/clear_refs — else a multirun's later runs would report the process's all-time peak.
    False where the CPU peak cannot be reset (then the record says the peak is the process's)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(since_reset: bool) -> dict[str, Any]:
    if torch.cuda.is_available():
        return {"cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}
    # CPU: the peak resident set (the allocator keeps no statistics on CPU); includes weights, data and the libraries
    if since_reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"cpu_peak_rss_mb": int(line.split()[1]) / 1024, "cpu_peak_rss_scope": "run"}
    return {"cpu_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss_scope": "process"}


class PeakMemory(pl.Callback):
    """The run's peak memory, counted from when the callback is made to the end of the fit."""

    def __init__(self) -> None:
        self.per_run = reset_peak_memory()
        self.result: dict[str, Any] = {}

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.result = peak_memory_mb(self.per_run)


class SavedActivations(pl.Callback):
    """What the first training step saved for backward: measured from the batch's start (before the forward) to its
    backward (the step's saved-tensor peak: nothing saved is freed before backward starts), in `model` as a whole and
    per module of `watched()` (called at that step, after the method set the model up). `on_measured(saved,
    measured_on)` receives the measurement (the method's hook, for a method that reports it)."""

    def __init__(self, model: nn.Module, watched: Callable[[], dict[str, nn.Module]],
                 on_measured: Callable[[SavedTensors, dict[str, Any]], None] | None = None) -> None:
        self.model, self.watched, self.on_measured = model, watched, on_measured
        self.saved: SavedTensors | None = None
        self.measured_on: dict[str, Any] = {}
        self._meter: SavedTensorMeter | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.saved is not None or self._meter is not None:
            return
        ids = batch.get("input_ids")
        self.measured_on = {"step": "first training forward", "batch": int(batch["labels"].shape[0]),
                            "positions": int(ids.shape[1]) if ids is not None else 0}
        self._meter = SavedTensorMeter(self.model, self.watched())
        self._meter.__enter__()

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._stop()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._stop()  # a step with no backward (no loss returned)

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()  # a failing first step (a non-finite loss) leaves no hooks behind

    def _stop(self) -> None:
        if self._meter is None:
            return
        self._meter.__exit__(None, None, None)
        self.saved, self._meter = self._meter.result, None
        if self.on_measured is not None:
            self.on_measured(self.saved, dict(self.measured_on))

    @property
    def result(self) -> dict[str, Any] | None:
        """cost.saved_tensors: bytes in total, the batch it was measured on, the largest (shape, dtype) groups."""
        if self.saved is None:
            return None
        return {"bytes": self.saved.total_bytes, "measured_on": self.measured_on, "largest": self.saved.largest(5)}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict[str, Any]:
    """Library versions, the commit (and whether tracked files differ from it), the device and torch's threads."""
    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "pytorch_lightning": pl.__version__, "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


class Environment(pl.Callback):
    """The environment at the end of the fit, with the attention implementation `model` ran and whether the optimizer
    was fused AdamW."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.result: dict[str, Any] = {}

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.result = {**environment(), "attn_implementation": self.model.config._attn_implementation,
                       "adamw_fused": bool(trainer.optimizers and trainer.optimizers[0].defaults.get("fused"))}


class RunTelemetry:
    """The four telemetry callbacks of one run (make it right before the Trainer) and the record sections they fill."""

    def __init__(self, model: nn.Module, watched: Callable[[], dict[str, nn.Module]],
                 on_measured: Callable[[SavedTensors, dict[str, Any]], None] | None = None) -> None:
        self.throughput, self.memory = Throughput(), PeakMemory()
        self.activations = SavedActivations(model, watched, on_measured)
        self.environment = Environment(model)

    @property
    def callbacks(self) -> list[pl.Callback]:
        return [self.throughput, self.memory, self.activations, self.environment]

    def cost(self) -> dict[str, Any]:
        """The record's `cost`, after the fit."""
        return {**self.throughput.result, **self.memory.result, "saved_tensors": self.activations.result}

    def environment_section(self) -> dict[str, Any]:
        """The record's `environment`, after the fit."""
        return self.environment.result

