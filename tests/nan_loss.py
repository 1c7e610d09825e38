"""A test-only method whose loss turns NaN at the second step (importable as `nan_loss.NanLoss` by Hydra in tests)."""
import torch

from ftlab.methods import Method


class NanLoss(Method):
    name = "nan_loss"

    def training_loss(self, ctx, batch, outputs, loss):
        return loss * torch.nan if ctx.global_step >= 1 else loss
