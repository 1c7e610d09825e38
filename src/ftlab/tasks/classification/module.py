"""The LightningModule of classification and regression tasks (GLUE): TaskModule's training loop, method hooks and
optimiser, a sequence-classification head, and dev metrics over the whole split (every rank's shard under DDP)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ...backbones import load_model
from ...methods.base import Method
from ..module import TaskModule
from .metrics import compute_metrics, predictions


class ClassificationModule(TaskModule):
    def __init__(self, model: nn.Module, method: Method, task: DictConfig, optim: DictConfig):
        super().__init__(model, method, task, optim)
        self._eval_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    @classmethod
    def load_model(cls, backbone: DictConfig, task: DictConfig, attn_implementation: str | None = None,
                   **config_overrides: Any) -> nn.Module:
        """A sequence-classification head of task.num_labels outputs (one, with an MSE loss, for regression)."""
        problem_type = "regression" if task.kind == "regression" else "single_label_classification"
        return load_model(backbone, attn_implementation=attn_implementation, num_labels=task.num_labels,
                          problem_type=problem_type, **config_overrides)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = self(batch).logits.float()
        self._eval_outputs.setdefault(dataloader_idx, []).append((logits.cpu(), batch["labels"].cpu(), batch["idx"].cpu()))

    def _gathered(self, outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, ...]:
        """(logits, labels, idx) of the whole split. Under DDP each rank saw only its shard of the dev set (Lightning's
        DistributedSampler, padded with repeated rows so the shards are equal): gather every rank's outputs and keep
        each example once, so every rank scores the full split exactly as one process would."""
        local = [torch.cat([o[k] for o in outputs]).numpy() if outputs else None for k in range(3)]
        shards = [s for s in self.gather_from_ranks(local) if s[0] is not None]
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

