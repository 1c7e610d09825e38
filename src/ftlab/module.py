"""The LightningModule: forward, loss, dev metrics, optimiser; every method-specific step goes through the hooks."""
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

from .errors import ConfigError, NonFiniteLossError
from .methods.base import Method
from .methods.context import MethodContext, model_inputs
from .metrics import compute_metrics, predictions
from .saved_tensors import SavedTensorMeter, SavedTensors

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight")


class FineTuneModule(pl.LightningModule):
    def __init__(self, model: nn.Module, method: Method, task: DictConfig, optim: DictConfig, backbone: DictConfig):
        super().__init__()
        self.model, self.method, self.task, self.optim, self.backbone = model, method, task, optim, backbone
        self.eval_splits = list(task.eval_splits)
        self.history: list[dict[str, Any]] = []
        self._eval_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        # what the first training forward (and loss) saved for backward: the step's activation peak, measured the
        # same way for every method (saved_tensors); CPU allocators keep no peak statistics
        self.saved_tensors: SavedTensors | None = None
        self.saved_tensors_batch: dict[str, int] = {}
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
        ctx.saved_tensors, ctx.saved_tensors_batch = self.saved_tensors, self.saved_tensors_batch
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

    def _train_examples(self) -> int | None:
        return train_index_count(self.trainer.datamodule)

    def _restart_schedule(self) -> None:
        """A fresh optimizer and schedule through Lightning (it calls configure_optimizers again)."""
        self.trainer.strategy.setup_optimizers(self.trainer)

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
        first = self.saved_tensors is None
        if first:
            ids = batch.get("input_ids")
            self.saved_tensors_batch = {"batch": int(batch["labels"].shape[0]),
                                        "positions": int(ids.shape[1]) if ids is not None else 0}
        meter = SavedTensorMeter(self.model, self.method.watched_modules()) if first else contextlib.nullcontext()
        ctx = self.method_context()
        with meter:
            outputs = self.method.training_forward(ctx, batch)
            loss = self.method.training_loss(ctx, batch, outputs, outputs.loss)
        if first:
            self.saved_tensors = meter.result
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

    # -- evaluation ---------------------------------------------------------------------------------------------
    def on_validation_start(self) -> None:
        self.method.on_validation_start(self.method_context())

    def on_validation_end(self) -> None:
        self.method.on_validation_end(self.method_context())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = self(batch).logits.float()
        self._eval_outputs.setdefault(dataloader_idx, []).append((logits.cpu(), batch["labels"].cpu(), batch["idx"].cpu()))

    def _gathered(self, outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, ...]:
        """(logits, labels, idx) of the whole split. Under DDP each rank saw only its shard of the dev set (Lightning's
        DistributedSampler, padded with repeated rows so the shards are equal): gather every rank's outputs and keep
        each example once, so every rank scores the full split exactly as one process would."""
        local = [torch.cat([o[k] for o in outputs]).numpy() if outputs else None for k in range(3)]
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1 or not torch.distributed.is_available() \
                or not torch.distributed.is_initialized():
            return tuple(local)
        shards: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(shards, local)
        shards = [s for s in shards if s[0] is not None]
        if not shards:
            return None, None, None
        logits, labels, idx = (np.concatenate([s[k] for s in shards]) for k in range(3))
        _, first = np.unique(idx, return_index=True)  # the padding rows repeat examples another rank scored
        return logits[first], labels[first], idx[first]

    def evaluate_collected(self) -> dict[str, dict[str, Any]]:
        """Metrics (and per-example predictions) of each dev split from the outputs collected this evaluation, over the
        whole split (every rank's shard under DDP)."""
        results = {}
        distributed = self._trainer is not None and self._trainer.world_size > 1
        for i, split in enumerate(self.eval_splits):
            outputs = self._eval_outputs.get(i, [])
            if not outputs and not distributed:  # under DDP every rank must join the gather, with or without rows
                continue
            logits, labels, idx = self._gathered(outputs)
            if logits is None:
                continue
            preds = predictions(logits, self.task.kind)
            order = np.argsort(idx)
            results[split] = {
                "metrics": compute_metrics(self.task.metrics, preds, labels),
                "predictions": preds[order].tolist(),
            }
            if self.task.kind != "regression":  # per-example right/wrong, for agreement across restarts
                results[split]["correct"] = (preds[order] == labels[order]).astype(int).tolist()
        self._eval_outputs = {}
        return results

    def on_validation_epoch_end(self) -> None:
        results = self.evaluate_collected()
        if self.trainer.sanity_checking or not results:
            return
        flat = {f"{split}/{name}": value for split, r in results.items() for name, value in r["metrics"].items()}
        self.log_dict(flat, prog_bar=True)
        self.history.append({
            "epoch": self.current_epoch,
            "step": self.global_step,
            "metrics": {split: r["metrics"] for split, r in results.items()},
            "predictions": {split: r["predictions"] for split, r in results.items()},
            "correct": {split: r["correct"] for split, r in results.items() if "correct" in r},
        })

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
