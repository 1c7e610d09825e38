"""Progress of a run, wherever its output goes.

On a terminal: a Rich bar whose description reads "Epoch 1/5" (1-based: a one-epoch run is "Epoch 1/1"), with
samples/s, the whole run's ETA and the latest dev metrics beside it. When stdout or stderr is not a terminal (a log file,
a sweep, a cluster job): one plain log line at the start of training, then one every `ui.log_every_s` seconds (the
first within the first minute whatever the interval) and one per validated epoch, with epoch, step/total, samples/s,
loss, the selection metric and the ETA. Only rank 0 reports under DDP.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from ..errors import ConfigError

log = logging.getLogger("ftlab")
FIRST_LINE_WITHIN_S = 60.0


def on_terminal() -> bool:
    """Whether both output streams are a terminal (Rich draws on stdout, Python's warnings go to stderr)."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


def duration(seconds: float | None) -> str:
    """A short human duration: 45s, 6m12s, 1h02m; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for key in ("labels", "input_ids"):
            if key in batch and hasattr(batch[key], "shape"):
                return int(batch[key].shape[0])
    return 0


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Pace:
    """Steps, samples and time since training started in this process; the rate over the recent window."""

    def __init__(self) -> None:
        self.started = self.window_start = 0.0
        self.first_step = 0
        self.window_samples, self.window_batch_seconds, self.rate = 0, 0.0, None
        self._batch_start = 0.0

    def start(self, trainer: pl.Trainer) -> None:
        self.started = self.window_start = time.perf_counter()
        self.first_step = trainer.global_step  # > 0 when resumed: the ETA counts this process's steps only
        self.window_samples, self.window_batch_seconds, self.rate = 0, 0.0, None

    def batch_start(self) -> None:
        self._batch_start = time.perf_counter()

    def batch_end(self, trainer: pl.Trainer, batch: Any) -> None:
        self.window_samples += _batch_size(batch) * max(1, trainer.world_size)
        self.window_batch_seconds += time.perf_counter() - self._batch_start
        if self.window_batch_seconds > 0:
            self.rate = self.window_samples / self.window_batch_seconds

    def new_window(self) -> None:
        self.window_start = time.perf_counter()
        self.window_samples, self.window_batch_seconds = 0, 0.0

    @staticmethod
    def total_steps(trainer: pl.Trainer) -> int | None:
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - an unsized loader: no total, no ETA
            return None
        return int(total) if total not in (None, float("inf")) else None

    def eta(self, trainer: pl.Trainer) -> float | None:
        """Seconds left at this process's pace so far (validation included)."""
        total, done = self.total_steps(trainer), trainer.global_step - self.first_step
        if total is None or done <= 0:
            return None
        return (total - trainer.global_step) * (time.perf_counter() - self.started) / done


def epoch_text(trainer: pl.Trainer) -> str:
    epochs = trainer.max_epochs
    current = trainer.current_epoch + 1
    return f"{current}/{epochs}" if epochs is not None and epochs > 0 else f"{current}"


class ProgressLog(pl.Callback):
    """Plain progress lines for a log file: start, every `every_s` seconds (first within a minute), each dev result."""

    def __init__(self, every_s: float, monitor: str, name: str = ""):
        if every_s <= 0:
            raise ConfigError(f"ui.log_every_s must be > 0 for progress lines, got {every_s}")
        self.every_s, self.monitor, self.name = float(every_s), monitor, name
        self.pace = Pace()
        self._next = 0.0
        self.lines = 0

    def _emit(self, trainer: pl.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            log.info("%s", text)
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            self.lines += 1

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.pace.start(trainer)
        self._next = self.pace.started + min(self.every_s, FIRST_LINE_WITHIN_S / 2)
        total = self.pace.total_steps(trainer)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        resumed = f", resumed at step {trainer.global_step}" if trainer.global_step else ""
        self._emit(trainer, f"training {self.name + ': ' if self.name else ''}{epochs} epoch(s), "
                            f"{total if total is not None else '?'} steps of {trainer.num_training_batches} batches an "
                            f"epoch{resumed}; a progress line every {duration(self.every_s)}")

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.pace.batch_start()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.pace.batch_end(trainer, batch)
        now = time.perf_counter()
        if now >= self._next:
            self._emit(trainer, self.line(trainer))
            self.pace.new_window()
            self._next = now + self.every_s

    def line(self, trainer: pl.Trainer) -> str:
        total = self.pace.total_steps(trainer)
        parts = [f"epoch {epoch_text(trainer)}", f"step {trainer.global_step}/{total if total is not None else '?'}"]
        if self.pace.rate is not None:
            parts.append(f"{self.pace.rate:.1f} samples/s")
        loss = _number(trainer.progress_bar_metrics.get("train/loss"))
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        dev = _number(trainer.callback_metrics.get(self.monitor))
        if dev is not None:
            parts.append(f"{self.monitor} {dev:.2f}")
        parts.append(f"elapsed {duration(time.perf_counter() - self.pace.started)}")
        parts.append(f"ETA {duration(self.pace.eta(trainer))}")
        return " · ".join(parts)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dev = _number(trainer.callback_metrics.get(self.monitor))
        if dev is not None:
            self._emit(trainer, f"validated epoch {epoch_text(trainer)}: {self.monitor} {dev:.2f} · "
                                f"elapsed {duration(time.perf_counter() - self.pace.started)} · "
                                f"ETA {duration(self.pace.eta(trainer))}")


class ProgressBar(RichProgressBar):
    """Lightning's Rich bar with 1-based epochs, samples/s, the run's ETA and the dev metrics (no v_num)."""

    def __init__(self) -> None:
        super().__init__()
        self.pace = Pace()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        super().on_train_start(trainer, module)
        self.pace.start(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, module, batch, batch_idx)
        self.pace.batch_start()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.pace.batch_end(trainer, batch)
        if self.pace.window_batch_seconds > 30:  # a rate over the last half-minute or so, not since the start
            self.pace.new_window()
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {epoch_text(self.trainer)}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description

    def get_metrics(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        if self.pace.rate is not None:
            items["samples/s"] = f"{self.pace.rate:.1f}"
        items["ETA"] = duration(self.pace.eta(trainer))
        return items


def progress_callbacks(enabled: bool, every_s: float | None, monitor: str, name: str = "") -> list[pl.Callback]:
    """The bar on a terminal, log lines elsewhere (none when `enabled` is false or `every_s` is 0/null)."""
    if not enabled:
        return []
    if on_terminal():
        return [ProgressBar()]
    return [ProgressLog(every_s, monitor, name)] if every_s else []
