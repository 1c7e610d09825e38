"""MethodContext: everything a method's hooks may see of the run, written down.

A method never sees the LightningModule, the Trainer or the data module. The training module (one per task kind)
builds one MethodContext per fit, keeps its clock current before every hook, and implements its operations with
Lightning; a test builds one by hand (`MethodContext(model, total_steps=10)`) and advances `global_step` itself.

Facts (plain attributes; read them, do not write them):

    model                 the nn.Module being fine-tuned (after Method.setup)
    task_kind             "classification" | "regression" | "generation"
    selection             (split, metric) the run selects its best evaluation by, e.g. ("dev", "accuracy")
    global_step, epoch    optimizer steps taken so far, epoch index. Lightning counts a step only after
                          on_after_optimizer_step returns: the step being taken there is number global_step + 1
    sanity_checking       True during Lightning's sanity validation (its results are not the run's)
    total_steps           optimizer steps of the whole fit (every epoch, or train.max_steps)
    steps_per_epoch       optimizer steps per epoch (micro-batches / accumulate_grad_batches, rounded up)
    max_epochs            epochs of the fit (None or -1: bounded by steps)
    accumulate_grad_batches   micro-batches per optimizer step
    device                where the model's weights are
    run_dir               the run's output folder (a method may write files under it, e.g. an exported model)
    world_size, is_global_zero   processes training together, and whether this one is rank 0
    history               the run's validated epochs so far ({"epoch", "step", "metrics", ...}), oldest first

Operations (call them):

    forward(batch)        the task's training forward (model outputs with .loss and .logits)
    log(name, value, batch_size=None)   log a scalar for this step (the run's logger)
    autocast()            a context manager: the trainer's precision for a forward outside the loop
    broadcast(obj)        rank 0's `obj` on every process (identity on one process)
    mean_over_processes(tensor)   the tensor averaged over processes (identity on one process)
    train_dataloader()    a fresh iterator over the training batches (None: no training data to read)
    train_examples()      how many example indices the training split spans (its largest batch["idx"] + 1), or None
    restart_schedule()    a fresh optimizer and learning-rate schedule from now on (Method.schedule_steps sizes it):
                          a method's new phase (DSEE's recovery)
    reset_history()       clear the run's history and return what it held: evaluations of a phase that must not
                          compete for the run's best (DSEE's unpruned phase 1)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


def model_inputs(batch: Batch) -> Batch:
    """The batch minus what the model must not see (the example index)."""
    return {k: v for k, v in batch.items() if k != "idx"}


def _same(value: Any) -> Any:
    return value


def _no_log(name: str, value: torch.Tensor, batch_size: int | None = None) -> None:
    return None


def _no_restart() -> None:
    raise RuntimeError("restart_schedule() needs a running fit: this MethodContext was built without one")


@dataclass(eq=False)
class MethodContext:
    """What a method's hooks see of the run (module docstring); defaults describe one process outside a Trainer."""

    model: nn.Module
    task_kind: str = "classification"
    selection: tuple[str, str] | None = None
    # the clock, kept current by the training module before every hook
    global_step: int = 0
    epoch: int = 0
    sanity_checking: bool = False
    # the fit
    total_steps: int = 0
    steps_per_epoch: int = 0
    max_epochs: int | None = None
    accumulate_grad_batches: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run_dir: Path | None = None
    world_size: int = 1
    is_global_zero: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    # operations (the training module supplies the ones that need a Trainer)
    forward: Callable[[Batch], Any] | None = None
    log: Callable[..., None] = _no_log
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    broadcast: Callable[[Any], Any] = _same
    mean_over_processes: Callable[[torch.Tensor], torch.Tensor] = _same
    train_dataloader: Callable[[], Iterable[Batch]] | None = None
    train_examples: Callable[[], int | None] = lambda: None
    restart_schedule: Callable[[], None] = _no_restart

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = lambda batch: self.model(**model_inputs(batch))

    def reset_history(self) -> list[dict[str, Any]]:
        """Empty the run's history (in place: the training module's own list) and return the entries it held."""
        entries = list(self.history)
        self.history.clear()
        return entries
