"""Full fine-tuning: the protocol's defaults (AdamW on every parameter, the optimiser settings of the config)."""
from .base import Method


class FineTune(Method):
    name = "finetune"
