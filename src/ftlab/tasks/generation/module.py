"""The LightningModule of generation tasks: TaskModule's training loop, method hooks and optimiser, with a
target-only (optionally label-smoothed) LM loss and evaluation by decoding the unique inputs.

Every validation decodes `task.eval_splits` (dev and test for E2E/WebNLG: model selection on `task.selection`, so
the record's best entry holds the test scores of the best-dev epoch, and its last entry those of the final weights,
which is what the LoRA recipe reports). After training, and after the method's `on_fit_end` (a merge, a final
prune), `task.test_splits` are decoded with the final weights, and so are the eval splits if no validation ran at
that step (so `train.max_steps=0` scores the untuned model). Outputs go to `<run dir>/generations/`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from transformers import PreTrainedTokenizerBase

from ...backbones import load_model
from ...methods.base import Method
from ..module import TaskModule
from .datamodule import GenerationDataModule
from .decode import generate_batch, generation_kwargs, write_outputs
from .metrics import score_generation


def target_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy over the positions whose label is not -100, in fp32, mean over target tokens."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           label_smoothing=label_smoothing)


class GenerationModule(TaskModule):
    def __init__(self, model: nn.Module, method: Method, task: DictConfig, optim: DictConfig,
                 tokenizer: PreTrainedTokenizerBase, output_dir: Path, pad_id: int):
        super().__init__(model, method, task, optim)
        self.tokenizer, self.output_dir = tokenizer, Path(output_dir)
        self.generate_kwargs = generation_kwargs(task.decoding, tokenizer, pad_id)
        self.label_smoothing = float(task.get("label_smoothing") or 0.0)
        self._decoded: dict[int, list[tuple[int, str]]] = {}
        self.outputs_written: dict[str, dict[str, str]] = {}

    @classmethod
    def load_model(cls, backbone: DictConfig, task: DictConfig, attn_implementation: str | None = None,
                   **config_overrides: Any) -> nn.Module:
        """A decoder LM (causal-LM head)."""
        return load_model(backbone, head="causal_lm", attn_implementation=attn_implementation, **config_overrides)

    @classmethod
    def for_run(cls, cfg: DictConfig, model: nn.Module, method: Method, data: GenerationDataModule,
                run_dir: Path) -> GenerationModule:
        """Decodes with the datamodule's tokenizer and padding id; outputs go to <run dir>/generations/."""
        return cls(model, method, cfg.task, cfg.optim, data.tokenizer, run_dir, data.pad_id)

    @property
    def evaluates_at_fit_end(self) -> bool:
        return True  # final_evaluation decodes after training (train.max_steps=0 scores the untuned model)

    def _all_ranks(self, local: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Every rank's decoded (index, text) pairs: under DDP each rank decodes a shard of the unique inputs, and every
        rank then scores the whole split, as one process would."""
        return [pair for shard in self.gather_from_ranks(local) for pair in shard]

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        outputs = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if "labels" in batch:
            outputs["loss"] = target_loss(outputs.logits, batch["labels"], self.label_smoothing)
        return outputs

    # -- evaluation by decoding ---------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        texts = generate_batch(self.model, batch, self.tokenizer, self.generate_kwargs)
        self._decoded.setdefault(dataloader_idx, []).extend(zip(batch["idx"].tolist(), texts))

    def _score(self, split: str, decoded: list[tuple[int, str]]) -> tuple[dict[str, Any], list[str]]:
        eval_set = self.trainer.datamodule.eval_set(split)
        hyps = [""] * len(eval_set.inputs)
        for i, text in decoded:
            hyps[i] = text
        metrics = score_generation(hyps, eval_set.references, list(self.task.metrics), self.task.metric_protocol)
        tag = f"{split}.step{self.global_step}"
        if self.trainer.is_global_zero:  # every rank holds the same texts: one writes them
            self.outputs_written[tag] = write_outputs(self.output_dir / "generations", tag, eval_set, hyps)
        return metrics, hyps

    def _record(self, results: dict[str, tuple[dict[str, Any], list[str]]], stage: str) -> None:
        self.history.append({
            "epoch": self.current_epoch, "step": self.global_step, "stage": stage,
            "metrics": {split: m for split, (m, _) in results.items()},
            "predictions": {split: h for split, (_, h) in results.items()},
            "correct": {},
        })

    def on_validation_epoch_end(self) -> None:
        decoded, self._decoded = self._decoded, {}
        if self.trainer.sanity_checking:
            return
        decoded = {i: self._all_ranks(decoded.get(i, [])) for i in range(len(self.eval_splits))}
        if not any(decoded.values()):
            return
        results = {split: self._score(split, decoded[i]) for i, split in enumerate(self.eval_splits)}
        flat = {f"{split}/{name}": value for split, (m, _) in results.items() for name, value in m.items()
                if isinstance(value, float)}
        self.log_dict(flat, prog_bar=True)
        self._record(results, "validation")

    def on_fit_end(self) -> None:
        super().on_fit_end()  # the method's end-of-training surgery comes first: the final scores are of its result
        self.final_evaluation()

    @torch.no_grad()
    def final_evaluation(self) -> None:
        data: GenerationDataModule = self.trainer.datamodule
        done_now = any(h["step"] == self.global_step and h["stage"] == "validation" for h in self.history)
        splits = data.test_splits + ([] if done_now else data.eval_splits)
        if not splits:
            return
        was_training = self.model.training
        self.model.eval()
        results = {}
        with self.trainer.precision_plugin.forward_context():
            rank, world = self.trainer.global_rank, max(1, self.trainer.world_size)
            for split in splits:
                decoded = []
                for b, batch in enumerate(data.prompt_dataloader(split, self.task.decoding.batch_size)):
                    if b % world != rank:  # under DDP each rank decodes every world-th batch
                        continue
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    decoded.extend(zip(batch["idx"].tolist(), generate_batch(self.model, batch, self.tokenizer, self.generate_kwargs)))
                results[split] = self._score(split, self._all_ranks(decoded))
        self.model.train(was_training)
        self._record(results, "final")

    def generation_report(self) -> dict[str, Any]:
        """For the run record: data sizes, decoding settings and the output files written."""
        return {"data": self.trainer.datamodule.describe(), "decoding": dict(self.generate_kwargs),
                "label_smoothing": self.label_smoothing, "outputs": self.outputs_written}

    def record_extras(self) -> dict[str, Any]:
        return {"generation": self.generation_report()}
