"""Known third-party noise, filtered once and in one place.

What a run would otherwise print, once per job of a multirun, that tells a user nothing they can act on: transformers'
load report ("classifier.weight | MISSING": the new head of every fine-tuning run) and its "Loading weights" bar,
Lightning's litlogger tip, torch's LeafSpec deprecation raised from inside Lightning, "the number of training batches
is smaller than the logging interval", the `weights_only` notices of checkpoint loading, Lightning's "Loading
`train_dataloader` to estimate" line and HF datasets' "Saving the dataset" bars (the tokenisation cache).

`FTLAB_VERBOSE=1` or `ui.verbose=true` shows them all again. `install` is called by `ftlab.train.run` (so it holds under
every launcher: the jobs of joblib, submitit and DDP run in other processes) and is idempotent.
"""
from __future__ import annotations

import logging
import os
import re
import warnings

# warnings.warn messages (matched anywhere in the message)
WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r".*weights_only",  # torch.load's FutureWarning / Lightning's notices about weights_only
    # DDP: ftlab's dev metrics are already computed over every rank's rows (ClassificationModule gathers them)
    r".*when logging on epoch level in distributed setting to accumulate the metric across",
)
# log records, by the logger that emits them
LOGS = {
    "pytorch_lightning.utilities.rank_zero": (r"litlogger", r"Loading `train_dataloader` to estimate"),
    "lightning.pytorch.utilities.rank_zero": (r"litlogger", r"Loading `train_dataloader` to estimate"),
    "pytorch_lightning.trainer.connectors.checkpoint_connector": (r"weights_only",),
    "lightning.pytorch.trainer.connectors.checkpoint_connector": (r"weights_only",),
    "transformers.modeling_utils": (r"LOAD REPORT",),
    "transformers.modeling_layers": (r"LOAD REPORT",),
}
ENV = "FTLAB_VERBOSE"


class _Drop(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to drop
            return True
        return not any(p.search(message) for p in self.patterns)


_filters: dict[str, _Drop] = {}
_warning_entries: list[tuple] = []


def verbose_requested(config_value: object = False) -> bool:
    """ui.verbose=true or FTLAB_VERBOSE set to anything but '', 0, false, no."""
    env = os.environ.get(ENV, "").strip().lower()
    return bool(config_value) or env not in ("", "0", "false", "no")


def install(verbose: bool = False) -> None:
    """Filter the known noise (verbose=False) or show everything again (verbose=True). Safe to call repeatedly."""
    _remove()
    if verbose:
        _progress_bars(enabled=True)
        return
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
        _warning_entries.append(warnings.filters[0])
    for name, patterns in LOGS.items():
        _filters[name] = _Drop(patterns)
        logging.getLogger(name).addFilter(_filters[name])
    _progress_bars(enabled=False)


def _remove() -> None:
    for entry in _warning_entries:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
    warnings._filters_mutated()  # noqa: SLF001 - the module's own cache invalidation, as filterwarnings calls it
    _warning_entries.clear()
    for name, drop in _filters.items():
        logging.getLogger(name).removeFilter(drop)
    _filters.clear()


def _progress_bars(enabled: bool) -> None:
    """transformers' "Loading weights" and datasets' "Saving the dataset" tqdm bars."""
    import datasets
    from transformers.utils import logging as hf_logging

    if enabled:
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
