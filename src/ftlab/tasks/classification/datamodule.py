"""The classification datamodule: one train loader (length-grouped, dynamic padding) and one loader per dev split."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from omegaconf import DictConfig
from torch.utils.data import DataLoader, RandomSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from ...errors import ConfigError
from ..datamodule import TaskDataModule
from .glue import read_hub_split, read_local_split
from .tokenize import tokenize_rows


class IndexedCollator:
    """Pads model inputs to the longest sequence in the batch (a multiple of 8) and passes labels and idx through."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = [f.pop("labels") for f in features]
        idx = [f.pop("idx") for f in features]
        for f in features:
            f.pop("length", None)
        batch = dict(self.pad(features))
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
        batch["idx"] = torch.tensor(idx, dtype=torch.long)
        return batch


def _subset(dataset: Dataset, limit: int | None) -> Dataset:
    """A fixed random subset (seed 0, independent of the run seed) so that every run sees the same examples."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=0).select(range(limit))


class ClassificationDataModule(TaskDataModule):
    def __init__(
        self,
        task: DictConfig,
        data: DictConfig,
        tokenizer: PreTrainedTokenizerBase,
        data_dir: Path,
        cache_dir: Path | None,
        batch_size: int,
        seed: int,
    ):
        super().__init__()
        if data.source not in ("local", "hub"):
            raise ConfigError(f"data.source={data.source!r} is not valid: choose 'local' or 'hub'")
        self.task, self.data, self.tokenizer = task, data, tokenizer
        self.data_dir, self.cache_dir = Path(data_dir), cache_dir
        self.batch_size, self.seed = batch_size, seed
        self.collate = IndexedCollator(tokenizer, data.pad_to_multiple_of)
        self.splits: dict[str, Dataset] = {}
        self.seed_shuffle(seed)

    @classmethod
    def for_run(cls, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> ClassificationDataModule:
        """Reads paths.data_dir (or the hub), tokenised splits cached under paths.cache_dir/tokenized."""
        cache_dir = Path(cfg.paths.cache_dir) / "tokenized" if cfg.paths.cache_dir else None
        return cls(cfg.task, cfg.data, tokenizer, Path(cfg.paths.data_dir), cache_dir, cfg.train.batch_size, cfg.seed)

    def load_split(self, split: str) -> Dataset:
        if split not in self.splits:
            read = read_local_split if self.data.source == "local" else None
            rows = read(self.data_dir, self.task, split) if read else read_hub_split(self.task, split)
            dataset = tokenize_rows(rows, self.tokenizer, list(self.task.text_fields), self.data.max_length, self.cache_dir)
            limit = self.data.max_train_samples if split == "train" else self.data.max_eval_samples
            self.splits[split] = _subset(dataset, limit)
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        self.load_split("train")
        for split in self.eval_splits:
            self.load_split(split)

    def train_dataloader(self) -> DataLoader:
        dataset = self.load_split("train")
        generator = self.train_generator()
        if self.data.group_by_length:
            sampler = LengthGroupedSampler(self.batch_size, lengths=dataset["length"], generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate,
            num_workers=self.data.num_workers, drop_last=False,
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        dataset = self.load_split(split)
        # longest first: padding is minimal and an out-of-memory error shows on the first batch, not the last
        lengths = dataset["length"]
        order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
        return DataLoader(
            dataset.select(order), batch_size=self.data.eval_batch_size, shuffle=False, collate_fn=self.collate,
            num_workers=self.data.num_workers,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self.eval_dataloader(split) for split in self.eval_splits]
