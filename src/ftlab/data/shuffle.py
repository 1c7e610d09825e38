"""The training set's shuffling stream, checkpointed: a resumed run draws the epoch orders an uninterrupted one would."""
from __future__ import annotations

from typing import Any

import torch


class ResumableShuffle:
    """Mixin for a LightningDataModule (list it first): `self.train_generator` feeds the train sampler, and its state
    travels in every checkpoint through Lightning's datamodule state_dict / load_state_dict."""

    train_generator: torch.Generator

    def seed_shuffle(self, seed: int) -> None:
        self.train_generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"train_generator": self.train_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_generator" in state:
            self.train_generator.set_state(state["train_generator"])
