"""Ranges of constructor parameters, in one place, keyed by parameter name (the types come from the type hints).

A name means the same thing in every method that takes it (`p` is a probability in DPS and Mixout, `budget` a
share of rows in both WTA-CRS variants, `dropout` a dropout probability everywhere), so one entry serves them all.
Where two methods use a name differently, the entry is the range valid for both (`alpha`: LoRA's scale and
R-Drop's KL weight are both >= 0) and the method's own __init__ checks the rest. A range applies only to numbers: a
name such as `layers` (Re-init: a count; Mixout/DPS: a role list) is range-checked only when its value is a number.
A new method needs no entry: a parameter whose name is not here has its type checked (from the constructor's hints)
and its range checked by the method itself, in its constructor or, before anything loads, in `Method.check_run`.
"""
from __future__ import annotations

from typing import NamedTuple

from .spec import Range, between, ge, gt


class Bound(NamedTuple):
    range: Range
    why: str = ""


PROBABILITY = Bound(between(0, 1, hi_open=True), "a probability")
FRACTION = Bound(between(0, 1, lo_open=True), "a fraction of the whole")

METHOD_RANGES: dict[str, Bound] = {
    # probabilities and shares
    "p": PROBABILITY,
    "dropout": PROBABILITY,
    "floor": Bound(PROBABILITY.range, "the share of p ∝ ‖X‖ mixed into WTA-CRS's sampling distribution"),
    "budget": Bound(FRACTION.range, "the share of token rows kept for the sampled weight gradient"),
    "reserve_p": Bound(FRACTION.range, "the fraction of block entries that are updated"),
    "density": Bound(FRACTION.range, "the fraction of weights kept"),
    "ur": Bound(between(0, 1, lo_open=True, hi_open=True), "each DPS phase lasts int(total_steps * ur) steps"),
    # strengths and scales
    "rho": Bound(gt(0), "the ADMM penalty weight"),
    "admm_iterations": Bound(ge(1), "ADMM iterations spread over the ADMM epochs"),
    "eps": Bound(gt(0), "DPS divides grad^2 by it"),
    "sigma": Bound(ge(0), "the noise scale"),
    "lam": Bound(ge(0), "the KL weight"),
    "alpha": Bound(ge(0), "LoRA's scale alpha / r, R-Drop's KL weight"),
    "std": Bound(gt(0), "the re-initialisation's standard deviation"),
    "fisher_clip_norm": Bound(gt(0), "the per-tensor gradient-norm clip of the Fisher pass"),
    "max_cache_mb": Bound(gt(0), "the gradient-norm cache's size limit"),
    # counts
    "r": Bound(ge(1), "the adapter rank"),
    "n": Bound(ge(1), "n:m keeps n of every m weights"),
    "m": Bound(ge(1), "n:m keeps n of every m weights"),
    "min_k": Bound(ge(1), "the fewest rows a sampled product keeps"),
    "max_positions": Bound(ge(1), "token positions per example in the WTA-CRS cache"),
    "num_sparse": Bound(ge(0), "sparse entries per adapted matrix"),
    "heads": Bound(ge(0), "attention heads removed per layer"),
    "phase1_epochs": Bound(ge(0), "epochs before DSEE prunes"),
    "masked_retrain_epochs": Bound(ge(0), "masked re-training epochs after the hard prune"),
    "iteration_every": Bound(ge(1), "optimizer steps per ADMM iteration (or 'epoch')"),
    "fisher_batches": Bound(ge(1), "batches of the Fisher estimate (null: the whole training set)"),
    "layers": Bound(ge(0), "top blocks to re-initialise"),
    "seed": Bound(between(0, 2**32 - 1), "numpy's seed range"),
}

# pl.Trainer arguments a trainer/*.yaml may set; their types come from pl.Trainer.__init__'s hints
TRAINER_RANGES: dict[str, Bound] = {
    "gradient_clip_val": Bound(ge(0), "null or 0 turns clipping off"),
    "log_every_n_steps": Bound(ge(1)),
    "num_sanity_val_steps": Bound(ge(-1), "-1 runs the whole dev set"),
}
