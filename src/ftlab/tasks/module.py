"""The LightningModule both task kinds share: forward, training step, resume state and optimiser, with every
method-specific step going through the method's hooks. A task kind subclasses it with its model head (`load_model`),
its construction from a run's config (`for_run`) and its evaluation (validation_step and on_validation_epoch_end):
tasks.classification.module.ClassificationModule, tasks.generation.module.GenerationModule. The task config names
the subclass by `task.module._target_`, and its datamodule (a tasks.datamodule.TaskDataModule) by
`task.datamodule._target_`."""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from transformers import get_linear_schedule_with_warmup

from ..config import import_class
from ..errors import ConfigError, NonFiniteLossError
from ..methods.base import Method
from ..methods.context import MethodContext, model_inputs
from .datamodule import TaskDataModule

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight")


def task_classes(task: DictConfig) -> tuple[type[TaskDataModule], type[TaskModule]]:
    """The datamodule and LightningModule classes a task config names by `task.datamodule._target_` and
    `task.module._target_`, imported (a ConfigError names the key when one is missing or wrong)."""
    return (import_class((task.get("datamodule") or {}).get("_target_"), "task.datamodule._target_", TaskDataModule),
            import_class((task.get("module") or {}).get("_target_"), "task.module._target_", TaskModule))


class TaskModule(pl.LightningModule):
    def __init__(self, model: nn.Module, method: Method, task: DictConfig, optim: DictConfig):
        super().__init__()
        self.model, self.method, self.task, self.optim = model, method, task, optim
        self.eval_splits = list(task.eval_splits)
        self.history: list[dict[str, Any]] = []
        self._eval_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        selection = task.get("selection")
        self.ctx = MethodContext(
            model, task_kind=task.kind, selection=(selection.split, selection.metric) if selection else None,
            forward=self, log=self._log_for_method, autocast=self._autocast, broadcast=self._broadcast,
            mean_over_processes=self._mean_over_processes, train_dataloader=self._train_dataloader,
            train_examples=self._train_examples, restart_schedule=self._restart_schedule,
        )

    # -- what methods see ---------------------------------------------------------------------------------------
    def method_context(self) -> MethodContext:
        """The methods' view of the run (methods/context.py), its clock brought up to date: every hook gets this."""
        ctx, trainer = self.ctx, self._trainer
        ctx.global_step, ctx.epoch, ctx.device, ctx.history = self.global_step, self.current_epoch, self.device, self.history
        if trainer is not None:
            ctx.sanity_checking = trainer.sanity_checking
            ctx.max_epochs, ctx.accumulate_grad_batches = trainer.max_epochs, int(trainer.accumulate_grad_batches)
            ctx.world_size, ctx.is_global_zero = trainer.world_size, trainer.is_global_zero
            ctx.run_dir = Path(trainer.default_root_dir)
        return ctx

    def _fit_extent(self) -> None:
        """The fit's length in optimizer steps (Lightning knows it once the training data is set up)."""
        trainer = self.trainer
        self.ctx.total_steps = int(trainer.estimated_stepping_batches)
        batches = trainer.num_training_batches
        self.ctx.steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else 0

    def _log_for_method(self, name: str, value: torch.Tensor, batch_size: int | None = None) -> None:
        self.log(name, value, batch_size=batch_size)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.trainer.precision_plugin.train_step_context()

    def _broadcast(self, obj: Any) -> Any:
        return self.trainer.strategy.broadcast(obj, src=0)

    def _mean_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="mean")

    def _train_dataloader(self) -> Any:
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ConfigError("this method reads the training data itself (trainer.datamodule.train_dataloader()); "
                              "fit with a datamodule (ftlab.train.run does)")
        return datamodule.train_dataloader()

    def gather_from_ranks(self, local: Any) -> list[Any]:
        """Every rank's `local` object, in rank order (under DDP each rank evaluated only its shard of a split); `[local]`
        in a single process. Every rank must call it, with or without rows of its own."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1 or not torch.distributed.is_available() \
                or not torch.distributed.is_initialized():
            return [local]
        shards: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(shards, local)
        return shards

    def _train_examples(self) -> int | None:
        return train_index_count(self.trainer.datamodule)

    def _restart_schedule(self) -> None:
        """A fresh optimizer and schedule through Lightning (it calls configure_optimizers again)."""
        self.trainer.strategy.setup_optimizers(self.trainer)

    # -- what a task kind provides ------------------------------------------------------------------------------
    @classmethod
    def load_model(cls, backbone: DictConfig, task: DictConfig, attn_implementation: str | None = None,
                   **config_overrides: Any) -> nn.Module:
        """The pre-trained backbone with this task kind's head; `config_overrides` set model config values."""
        raise NotImplementedError

    @classmethod
    def for_run(
        cls, cfg: DictConfig, model: nn.Module, method: Method, data: TaskDataModule, run_dir: Path
    ) -> TaskModule:
        """The module of a run: the composed config, its model (method set up), datamodule and output folder."""
        return cls(model, method, cfg.task, cfg.optim)

    @property
    def evaluates_at_fit_end(self) -> bool:
        """True when the module evaluates once more after training (a run may then end without a validation)."""
        return False

    def record_extras(self) -> dict[str, Any]:
        """What this task kind adds to the run record (nothing by default)."""
        return {}

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**model_inputs(batch))

    # -- training -----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._fit_extent()
        self.method.on_fit_start(self.method_context())

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.method.on_train_batch_start(self.method_context(), batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ctx = self.method_context()
        outputs = self.method.training_forward(ctx, batch)
        loss = self.method.training_loss(ctx, batch, outputs, outputs.loss)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                f"lower the learning rate (optim.lr={self.optim.lr}), enable gradient clipping, or check the data"
            )
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.method.on_before_optimizer_step(self.method_context(), optimizer)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.on_after_optimizer_step(self.method_context())

    def on_train_epoch_end(self) -> None:
        self.method.on_train_epoch_end(self.method_context(), self.current_epoch)

    def on_fit_end(self) -> None:
        self.method.on_fit_end(self.method_context())

    # -- resume ---------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """What Lightning's checkpoint lacks for an exact resume: the validated epochs, the method's own state and the
        random streams (dropout, sampling) as they stand at the end of the epoch."""
        checkpoint["ftlab"] = {
            "history": self.history, "method": self.method.resume_state(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("ftlab") or {}
        self.history = list(state.get("history") or [])
        self.method.load_resume_state(state.get("method") or {})
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])

    # -- evaluation hooks (the evaluation itself is the task kind's) --------------------------------------------
    def on_validation_start(self) -> None:
        self.method.on_validation_start(self.method_context())

    def on_validation_end(self) -> None:
        self.method.on_validation_end(self.method_context())

    # -- optimiser ----------------------------------------------------------------------------------------------
    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning refuses to clip for any fused optimizer, since under fp16 loss scaling it would unscale inside its
        step; ftlab fuses AdamW only without loss scaling (configure_optimizers), so these are the true gradients."""
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> dict[str, Any]:
        named = list(self.method.parameters_to_train(self.model))
        decay = [p for n, p in named if not any(k in n for k in NO_DECAY)]
        no_decay = [p for n, p in named if any(k in n for k in NO_DECAY)]
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # Fused AdamW (what the HF Trainer uses by default): one kernel over all parameters, ~5x faster than the
        # per-tensor loop on CPU (14 vs 74 ms per MiniLM step: benchmarks/optimizer_step.py). Not under fp16 loss
        # scaling: there a fused optimizer unscales inside its step, so the methods' gradient hooks would see scaled
        # gradients.
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps,
            fused=str(self.trainer.precision) not in ("16-mixed", "16", "16-true"),
        )
        # steps left (all of them at fit start; fewer when a method re-creates the optimizer mid-fit), or the phase's
        self._fit_extent()
        total = self.method.schedule_steps(self.method_context(), self.ctx.total_steps - self.trainer.global_step)
        warmup = self.optim.warmup_steps if self.optim.warmup_steps else math.ceil(self.optim.warmup_ratio * total)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def train_index_count(datamodule: Any) -> int | None:
    """How many example indices the training split spans (its largest `idx` + 1: a subset keeps the rows' indices in
    the full split), where the data module can say (`load_split`); None otherwise."""
    load = getattr(datamodule, "load_split", None)
    if load is None:
        return None
    train = load("train")
    ids = train["idx"] if "idx" in getattr(train, "column_names", ()) else None
    return max(ids) + 1 if ids else len(train)
