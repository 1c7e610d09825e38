"""A test-only method: plain fine-tuning that sleeps after every optimizer step, so a fault-injection test can signal
or kill a run between two validated epochs (importable as `slow_method.Slow` by Hydra in tests)."""
import time

from ftlab.methods import Method


class Slow(Method):
    name = "slow"

    def on_after_optimizer_step(self, ctx) -> None:
        time.sleep(0.15)
