"""The datamodule both task kinds build on: a LightningDataModule with a checkpointed training shuffle
(data.shuffle.ResumableShuffle) and one construction from a run's config, so train.py builds whichever datamodule the
task config names by `task.datamodule._target_` (tasks.classification.datamodule.ClassificationDataModule,
tasks.generation.datamodule.GenerationDataModule)."""
from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from ..data.shuffle import ResumableShuffle


class TaskDataModule(ResumableShuffle, pl.LightningDataModule):
    task: DictConfig

    @classmethod
    def for_run(cls, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> TaskDataModule:
        """The datamodule of a run, from the composed config and the backbone's tokenizer."""
        raise NotImplementedError

    @property
    def eval_splits(self) -> list[str]:
        return list(self.task.eval_splits)
