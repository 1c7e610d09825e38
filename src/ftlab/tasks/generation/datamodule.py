"""The data module of generation tasks: prompt+target training sequences, and unique inputs to decode for evaluation.

Sequence layout (LoRA's `gpt2_encode.py --add_bos --add_eos`): `tokens(input) + [sep]` is the prompt and
`tokens(" " + target) + [eos]` the target, where sep is the tokenizer's BOS token (falling back to EOS) and eos its
EOS token; for GPT-2 both are `<|endoftext|>`, exactly LoRA's sequences. The loss sees only the target: labels are
-100 on every prompt position. Evaluation decodes each unique input once (left-padded prompts, longest first) and
scores it against all the references of that input; `EvalSet.line_to_input` maps every original line back.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, RandomSampler
from transformers import PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from ...errors import ConfigError, DataError
from ..datamodule import TaskDataModule
from .readers import D2TRow, read_d2t_split


@dataclass
class EvalSet:
    """The unique inputs of an evaluation split, their references, and where each original line went."""

    split: str
    inputs: list[str]              # unique linearised inputs, first-appearance order
    references: list[list[str]]    # references of inputs[i]
    line_to_input: list[int]       # original row j -> index into inputs (-1: not selected by max_eval_samples)
    wheres: list[str]              # "file:line" of every original row


def group_references(rows: list[D2TRow], split: str, limit: int | None = None, seed: int = 0) -> EvalSet:
    """Group rows by identical input (E2E's measure_scores groups references per MR the same way)."""
    order: dict[str, int] = {}
    refs: list[list[str]] = []
    for row in rows:
        i = order.setdefault(row["input"], len(order))
        if i == len(refs):
            refs.append([])
        if row["target"] is not None:
            refs[i].append(row["target"])
    missing = [row["where"] for row in rows if not refs[order[row["input"]]]]
    if missing:
        raise DataError(
            f"split {split!r} has {len(missing)} input(s) without any reference (first: {missing[0]}); evaluation needs "
            f"references: use the labelled file (E2E testset_w_refs.csv, WebNLG testdata_with_lex.xml), not the "
            f"inputs-only one"
        )
    inputs = list(order)
    keep = range(len(inputs))
    if limit is not None and limit < len(inputs):  # a fixed random subset (seed 0), kept in file order
        keep = sorted(random.Random(seed).sample(range(len(inputs)), limit))
    new_index = {old: new for new, old in enumerate(keep)}
    return EvalSet(
        split=split, inputs=[inputs[i] for i in keep], references=[refs[i] for i in keep],
        line_to_input=[new_index.get(order[row["input"]], -1) for row in rows], wheres=[row["where"] for row in rows],
    )


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(separator, eos) token ids: BOS (else EOS) ends the prompt, EOS ends the target."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} has no EOS token, so generated text cannot end; use a decoder "
            f"backbone's tokenizer (gpt2, smollm2, tiny-gpt2)"
        )
    return (tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos), eos


def encode_training_rows(
    rows: list[D2TRow], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict[str, list[int]]]:
    """input_ids = prompt + target, labels = -100 on the prompt; a row without a reference is a DataError."""
    for row in rows:
        if not row["target"]:
            raise DataError(
                f"{row['where']}: training row has no reference text; every training row needs a target "
                f"(fix the file, or train on the labelled split)"
            )
    sep, eos = special_ids(tokenizer)
    prompts = tokenizer([r["input"] for r in rows], add_special_tokens=False)["input_ids"]
    targets = tokenizer([" " + r["target"] for r in rows], add_special_tokens=False)["input_ids"]
    out = []
    for prompt, target in zip(prompts, targets):
        prompt, target = prompt + [sep], target + [eos]
        ids = (prompt + target)[:max_length]
        labels = ([-100] * len(prompt) + target)[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def encode_prompts(inputs: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[list[int]]:
    sep, _ = special_ids(tokenizer)
    return [ids[: max_length - 1] + [sep] for ids in tokenizer(inputs, add_special_tokens=False)["input_ids"]]


class TrainCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) to the longest row, a multiple of 8."""

    def __init__(self, pad_id: int, multiple: int | None):
        self.pad_id, self.multiple = pad_id, multiple or 1

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PromptCollator:
    """Left-pads prompts (generation continues from the right end) and passes the unique-input index as idx."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[tuple[int, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for _, ids in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, (_, prompt) in enumerate(features):
            ids[i, width - len(prompt):], mask[i, width - len(prompt):] = torch.tensor(prompt), 1
        return {"input_ids": ids, "attention_mask": mask, "idx": torch.tensor([i for i, _ in features])}


class GenerationDataModule(TaskDataModule):
    """Training sequences for `train`, EvalSets for `task.eval_splits` (every validation) and `task.test_splits`."""

    def __init__(
        self, task: DictConfig, data: DictConfig, tokenizer: PreTrainedTokenizerBase, data_dir: Path,
        batch_size: int, seed: int,
    ):
        super().__init__()
        if data.source != "local":
            raise ConfigError(f"task {task.name} reads its official files from paths.data_dir; data.source must be 'local'")
        self.task, self.data, self.tokenizer = task, data, tokenizer
        self.data_dir, self.batch_size, self.seed = Path(data_dir), batch_size, seed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else special_ids(tokenizer)[1]
        self.train_rows: list[dict[str, list[int]]] | None = None
        self.eval_sets: dict[str, EvalSet] = {}
        self.seed_shuffle(seed)

    @classmethod
    def for_run(cls, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> GenerationDataModule:
        """Reads the task's official files under paths.data_dir (small enough to tokenise at every run)."""
        return cls(cfg.task, cfg.data, tokenizer, Path(cfg.paths.data_dir), cfg.train.batch_size, cfg.seed)

    @property
    def test_splits(self) -> list[str]:
        return list(self.task.get("test_splits") or [])

    def train_data(self) -> list[dict[str, list[int]]]:
        if self.train_rows is None:
            rows = read_d2t_split(self.data_dir, self.task, "train")
            limit = self.data.max_train_samples
            if limit is not None and limit < len(rows):  # a fixed random subset (seed 0), the same for every run
                rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), limit))]
            self.train_rows = encode_training_rows(rows, self.tokenizer, self.data.max_length)
        return self.train_rows

    def eval_set(self, split: str) -> EvalSet:
        if split not in self.eval_sets:
            rows = read_d2t_split(self.data_dir, self.task, split)
            self.eval_sets[split] = group_references(rows, split, self.data.max_eval_samples)
        return self.eval_sets[split]

    def setup(self, stage: str | None = None) -> None:
        self.train_data()
        for split in self.eval_splits + self.test_splits:
            self.eval_set(split)

    def train_dataloader(self) -> DataLoader:
        rows = self.train_data()
        generator = self.train_generator()
        if self.data.group_by_length:
            sampler = LengthGroupedSampler(self.batch_size, lengths=[len(r["input_ids"]) for r in rows], generator=generator)
        else:
            sampler = RandomSampler(rows, generator=generator)
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=TrainCollator(self.pad_id, self.data.pad_to_multiple_of), num_workers=self.data.num_workers)

    def prompt_dataloader(self, split: str, batch_size: int) -> DataLoader:
        """Unique inputs of `split`, longest first (least padding; an out-of-memory error shows on the first batch)."""
        prompts = encode_prompts(self.eval_set(split).inputs, self.tokenizer, self.data.max_length)
        items = sorted(enumerate(prompts), key=lambda item: -len(item[1]))
        return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=PromptCollator(self.pad_id))

    def val_dataloader(self) -> list[DataLoader]:
        return [self.prompt_dataloader(split, self.task.decoding.batch_size) for split in self.eval_splits]

    def describe(self) -> dict[str, Any]:
        """Sizes for the run record: training sequences, and unique inputs / lines / references per eval split."""
        out: dict[str, Any] = {"train_sequences": len(self.train_rows or [])}
        for split, s in self.eval_sets.items():
            out[split] = {"unique_inputs": len(s.inputs), "lines": len(s.line_to_input),
                          "references": sum(len(r) for r in s.references)}
        return out
