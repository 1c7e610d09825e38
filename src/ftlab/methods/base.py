"""The method hook protocol.

The training module (`ftlab.tasks.module.TaskModule`) calls these hooks at fixed points of the Lightning loop; every
hook defaults to doing nothing, so a method overrides only what it needs. Hooks receive a `MethodContext`
(methods/context.py), never the LightningModule: the model, the clock (global step, epoch), the task kind and
selection, the fit's extent, a logger, and explicit operations (`forward`, `restart_schedule()`, `reset_history()`,
...). What a method may touch of the run is exactly what that class lists; a test builds one by hand.

State a method keeps (masks, ADMM Z and U, caches) lives on the method instance or as buffers on the model, never in
class attributes or module globals: two runs in one process must not meet.

Order within one optimizer step: training_forward -> training_loss (every micro-batch) -> on_before_optimizer_step (once,
unscaled gradients, before clipping) -> optimizer.step -> on_after_optimizer_step (once; Lightning increments
`ctx.global_step` only after this hook returns, so the step just taken is number `ctx.global_step + 1`).

Adding a method: one file (or package) under methods/ with a Method subclass, and one conf/method/<name>.yaml whose
`_target_` names the class; nothing else lists methods. tests/test_method_contract.py runs every conf/method/*.yaml
end to end on a tiny backbone, with the class's `tiny_runs` overrides.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from ..telemetry.saved_tensors import SavedTensors
from .context import MethodContext


class Method:
    """Full fine-tuning: every hook is a no-op. Subclass and override hooks to build a method."""

    name = "finetune"
    # Plain attributes an interrupted run needs to continue exactly (tensors belong in model buffers, which every
    # checkpoint holds). None: the method keeps state it cannot hand over (caches, phases rebuilt at fit start), so an
    # interrupted run of it starts over instead of resuming.
    resume_attributes: tuple[str, ...] | None = ()
    # Hydra overrides under which a seconds-long run (tiny backbone, a few optimizer steps) exercises the method: the
    # contract test (tests/test_method_contract.py) runs every conf/method/*.yaml naming this class once per entry.
    # Default: one run of tiny-bert on RTE rows as the conftest's `tiny_overrides` set it up.
    tiny_runs: ClassVar[tuple[tuple[str, ...], ...]] = ((),)

    @classmethod
    def check_run(cls, method: dict[str, Any], train: dict[str, Any]) -> None:
        """Before anything loads (ftlab.validation.validate_run_config): raise ftlab.errors.ConfigError when the
        method's resolved keys `method` cannot work with the run's `train` keys (e.g. DSEE phases that leave no
        recovery epochs). Default: nothing to check."""

    def resume_state(self) -> dict[str, Any]:
        """Saved with every resume checkpoint."""
        return {name: getattr(self, name) for name in self.resume_attributes or ()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        """Before the optimizer exists: swap layers, add parameters or buffers, freeze what is not trained."""

    def parameters_to_train(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs handed to the optimizer."""
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def schedule_steps(self, ctx: MethodContext, steps_left: int) -> int:
        """Optimizer steps the learning-rate schedule being built should span; called whenever the optimizer is built
        (fit start, and each `ctx.restart_schedule()`). Default: every step left in the fit. A method that restarts the
        schedule mid-fit (DSEE's recovery phase) returns the length of the current phase."""
        return steps_left

    def on_fit_start(self, ctx: MethodContext) -> None:
        """Once, weights loaded and on device: one-shot masks, Fisher estimates, index sets."""

    def watched_modules(self) -> dict[str, nn.Module]:
        """Modules whose saved activations the run record reports apart from the whole forward's (e.g. the layers a
        method replaced); the run measures the first training step (ftlab.telemetry.callbacks.SavedActivations)."""
        return {}

    def on_saved_tensors(self, saved: SavedTensors, measured_on: dict[str, Any]) -> None:
        """Once, after the first training step's forward and loss: what they saved for backward, in total and per
        watched module (`saved.watched_bytes`), and the batch it was measured on. For a method that reports it."""

    def on_train_batch_start(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> None:
        """Before each training micro-batch's forward: per-batch state keyed by the batch (e.g. the example indices
        `batch["idx"]`, which the model itself never sees)."""

    def training_forward(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> Any:
        """Every training micro-batch: the model outputs (with `.loss` and `.logits`) that training_loss receives.
        Override to change the forward itself (R-Drop runs the batch twice in one concatenated pass)."""
        return ctx.forward(batch)

    def training_loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        """Every training micro-batch: return the loss to back-propagate (add penalties, extra forwards)."""
        return loss

    def on_before_optimizer_step(self, ctx: MethodContext, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimizer step, gradients accumulated and unscaled: mask or record gradients."""

    def on_after_optimizer_step(self, ctx: MethodContext) -> None:
        """Right after each optimizer update: re-apply masks, periodic work keyed on ctx.global_step."""

    def on_train_epoch_end(self, ctx: MethodContext, epoch: int) -> None:
        """End of a training epoch (after that epoch's validation)."""

    def on_validation_start(self, ctx: MethodContext) -> None:
        """Before each evaluation: e.g. swap in hard-projected weights."""

    def on_validation_end(self, ctx: MethodContext) -> None:
        """After each evaluation: undo what on_validation_start did."""

    def on_fit_end(self, ctx: MethodContext) -> None:
        """After training: hard prune, merge, verify."""

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        """Method-specific facts for the run record (sparsity, similarity, ...)."""
        return {}
