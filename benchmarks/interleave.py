"""Interleaved timing: pipelines take turns on the CPU in rounds (A B C A B C ...), so a change of load on a shared
machine lands on every pipeline within the same round and a per-round ratio stays honest. Timing one pipeline after
the other lets load that changes between the windows flip the ratio (a quiet-machine 2.33x read 0.80x under load).

Each pipeline runs its own, unmodified training loop in a thread; a callback at its step boundaries waits for its
turn (`Baton.wait`) and hands over after `block` steps (`Baton.pass_on`). Only the thread holding the baton computes,
so the pipelines never compete for the cores (PyTorch releases the GIL inside ops; the waiting threads sleep).
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class Baton:
    """Round-robin turns among named participants; one that finishes (or fails) leaves without stalling the rest."""

    def __init__(self, names: list[str]):
        self.order, self.active, self.turn = list(names), set(names), 0
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name or name not in self.active)

    def _advance(self) -> None:
        for _ in range(len(self.order)):
            self.turn = (self.turn + 1) % len(self.order)
            if self.order[self.turn] in self.active:
                break
        self.cond.notify_all()

    def pass_on(self, name: str) -> None:
        with self.cond:
            if self.order[self.turn] == name:
                self._advance()

    def leave(self, name: str) -> None:
        with self.cond:
            self.active.discard(name)
            if self.active and self.order[self.turn] == name:
                self._advance()
            self.cond.notify_all()


@dataclass
class Rounds:
    """Per-round totals of one pipeline: seconds inside its steps, samples and real (non-padding) tokens."""

    seconds: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    padded_tokens: list[int] = field(default_factory=list)

    def add(self, round_index: int, seconds: float, samples: int, tokens: int, padded_tokens: int) -> None:
        while len(self.seconds) <= round_index:
            for series in (self.seconds, self.samples, self.tokens, self.padded_tokens):
                series.append(0)
        self.seconds[round_index] += seconds
        self.samples[round_index] += samples
        self.tokens[round_index] += tokens
        self.padded_tokens[round_index] += padded_tokens

    def rate(self, what: str = "samples", skip: int = 0) -> list[float]:
        return [n / s for n, s in zip(getattr(self, what)[skip:], self.seconds[skip:]) if s > 0]


class StepTurns:
    """A pipeline's side of the baton, called at its step boundaries: `begin()` before a step (waits for the turn at
    the start of each block), `end(samples, tokens, padded)` after it (hands over at the end of each block)."""

    def __init__(self, name: str, baton: Baton, block: int):
        self.name, self.baton, self.block = name, baton, block
        self.rounds, self.step, self._t = Rounds(), 0, 0.0

    def begin(self) -> None:
        if self.step % self.block == 0:
            self.baton.wait(self.name)
        self._t = time.perf_counter()

    def end(self, samples: int, tokens: int, padded_tokens: int) -> None:
        self.rounds.add(self.step // self.block, time.perf_counter() - self._t, samples, tokens, padded_tokens)
        self.step += 1
        if self.step % self.block == 0:
            self.baton.pass_on(self.name)


def run_in_turns(pipelines: dict[str, Callable[[StepTurns], None]], block: int) -> dict[str, Rounds]:
    """Run each pipeline (a function driving its own loop through the StepTurns it is given) in its own thread, in
    turns of `block` steps. Returns each pipeline's per-round totals; re-raises the first failure."""
    baton = Baton(list(pipelines))
    turns = {name: StepTurns(name, baton, block) for name in pipelines}
    errors: list[BaseException] = []

    def drive(name: str) -> None:
        try:
            pipelines[name](turns[name])
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread below
            errors.append(error)
        finally:
            baton.leave(name)

    threads = [threading.Thread(target=drive, args=(name,), name=name) for name in pipelines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {name: t.rounds for name, t in turns.items()}


def ratio_summary(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-round ratios numerator[i] / denominator[i]."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    return statistics.median(ratios), min(ratios), max(ratios)


def alternate(pipelines: dict[str, Callable[[], tuple[float, int]]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """For whole passes (an evaluation, a decode): call each pipeline in turn, `rounds` times after `warmup` untimed
    rounds; each call returns (seconds, units done). Returns the per-round rates (units per second)."""
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(warmup + rounds):
        for name, run in pipelines.items():
            seconds, units = run()
            if r >= warmup:
                rates[name].append(units / seconds)
    return rates
