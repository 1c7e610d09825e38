"""The training set's shuffling stream, checkpointed: a resumed run draws the epoch orders an uninterrupted one would."""
from __future__ import annotations

from typing import Any

import torch


class ResumableShuffle:
    """Mixin for a LightningDataModule (list it first). Every `train_generator()` call starts from the same state (the
    seed, or the state a checkpoint restored), so a method that draws batches before training (CHILD-TUNING_D's Fisher
    pass) sees the order training will see, as a fresh seeded generator per loader always did. The state of the
    loader in use travels in every checkpoint through Lightning's datamodule state_dict / load_state_dict."""

    def seed_shuffle(self, seed: int) -> None:
        self._shuffle_start = torch.Generator().manual_seed(seed).get_state()
        self._shuffle_in_use: torch.Generator | None = None

    def train_generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.set_state(self._shuffle_start)
        self._shuffle_in_use = generator
        return generator

    def state_dict(self) -> dict[str, Any]:
        in_use = self._shuffle_in_use
        return {"train_generator": in_use.get_state() if in_use is not None else self._shuffle_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_generator" in state:
            self._shuffle_start = state["train_generator"]
