"""The method hook protocol.

`ftlab.tasks.module.TaskModule` calls these hooks at fixed points of the Lightning loop; every hook defaults to doing
nothing, so a method overrides only what it needs. State a method keeps (masks, ADMM Z and U, caches) lives on the
method instance or as buffers on the model, never in class attributes or module globals: two runs in one process must
not meet.

Order within one optimizer step: training_forward -> training_loss (every micro-batch) -> on_before_optimizer_step (once, unscaled
gradients, before clipping) -> optimizer.step -> on_after_optimizer_step (once; Lightning increments
`module.trainer.global_step` only after this hook returns, so the step just taken is number `global_step + 1`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from ..telemetry.saved_tensors import SavedTensors

if TYPE_CHECKING:
    from pytorch_lightning import LightningModule as FineTuneModule  # hooks get the run's tasks.module.TaskModule


class Method:
    """Full fine-tuning: every hook is a no-op. Subclass and override hooks to build a method."""

    name = "finetune"
    # Plain attributes an interrupted run needs to continue exactly (tensors belong in model buffers, which every
    # checkpoint holds). None: the method keeps state it cannot hand over (caches, phases rebuilt at fit start), so an
    # interrupted run of it starts over instead of resuming.
    resume_attributes: tuple[str, ...] | None = ()

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

    def schedule_steps(self, module: FineTuneModule, steps_left: int) -> int:
        """Optimizer steps the learning-rate schedule being built should span; called from configure_optimizers.
        Default: every step left in the fit. A method that re-creates the optimizer mid-fit (DSEE's recovery phase,
        via `trainer.strategy.setup_optimizers(trainer)`) returns the length of the current phase."""
        return steps_left

    def on_fit_start(self, module: FineTuneModule) -> None:
        """Once, weights loaded and on device: one-shot masks, Fisher estimates, index sets."""

    def watched_modules(self) -> dict[str, nn.Module]:
        """Modules whose saved activations the run record reports apart from the whole forward's (e.g. the layers a
        method replaced); the run measures the first training step (ftlab.telemetry.callbacks.SavedActivations)."""
        return {}

    def on_saved_tensors(self, saved: SavedTensors, measured_on: dict[str, Any]) -> None:
        """Once, after the first training step's forward and loss: what they saved for backward, in total and per
        watched module (`saved.watched_bytes`), and the batch it was measured on. For a method that reports it."""

    def on_train_batch_start(self, module: FineTuneModule, batch: dict[str, torch.Tensor]) -> None:
        """Before each training micro-batch's forward: per-batch state keyed by the batch (e.g. the example indices
        `batch["idx"]`, which the model itself never sees)."""

    def training_forward(self, module: FineTuneModule, batch: dict[str, torch.Tensor]) -> Any:
        """Every training micro-batch: the model outputs (with `.loss` and `.logits`) that training_loss receives.
        Override to change the forward itself (R-Drop runs the batch twice in one concatenated pass)."""
        return module(batch)

    def training_loss(self, module: FineTuneModule, batch: dict[str, torch.Tensor], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        """Every training micro-batch: return the loss to back-propagate (add penalties, extra forwards)."""
        return loss

    def on_before_optimizer_step(self, module: FineTuneModule, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimizer step, gradients accumulated and unscaled: mask or record gradients."""

    def on_after_optimizer_step(self, module: FineTuneModule) -> None:
        """Right after each optimizer update: re-apply masks, periodic work keyed on trainer.global_step."""

    def on_train_epoch_end(self, module: FineTuneModule, epoch: int) -> None:
        """End of a training epoch (after that epoch's validation)."""

    def on_validation_start(self, module: FineTuneModule) -> None:
        """Before each evaluation: e.g. swap in hard-projected weights."""

    def on_validation_end(self, module: FineTuneModule) -> None:
        """After each evaluation: undo what on_validation_start did."""

    def on_fit_end(self, module: FineTuneModule) -> None:
        """After training: hard prune, merge, verify."""

    def report(self, module: FineTuneModule) -> dict[str, Any]:
        """Method-specific facts for the run record (sparsity, similarity, ...)."""
        return {}
