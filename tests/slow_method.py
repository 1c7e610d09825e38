"""A test-only method: plain fine-tuning that sleeps after every optimizer step, so a fault-injection test can signal
or kill a run between two validated epochs (importable as `slow_method.Slow` by Hydra in tests). With FTLAB_TEST_GATE
set to a path, each step also waits until that file exists: a test holds the run mid-fit for as long as it needs."""
import os
import time
from pathlib import Path

from ftlab.methods import Method


class Slow(Method):
    name = "slow"

    def on_after_optimizer_step(self, ctx) -> None:
        time.sleep(0.15)
        gate = os.environ.get("FTLAB_TEST_GATE")
        deadline = time.time() + 300
        while gate and not Path(gate).exists() and time.time() < deadline:
            time.sleep(0.1)
