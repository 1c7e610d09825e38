"""ftlab.ui.quiet: the known third-party noise is filtered, everything else still shows, and the switch brings it back."""
from __future__ import annotations

import logging
import warnings

import pytest
from omegaconf import OmegaConf

from ftlab.ui import quiet
from ftlab.backbones import load_model

from conftest import PROJECT_ROOT

NOISE = ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`",
         "The number of training batches (2) is smaller than the logging interval Trainer(log_every_n_steps=50).",
         "You are using `torch.load` with `weights_only=False`")


@pytest.fixture(autouse=True)
def _restore():
    yield
    quiet.install(verbose=True)  # leave the process as it was for the next test file


def _warned(*messages: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()  # its filters go in front of "always"
        for message in messages:
            warnings.warn(message, UserWarning)
    return [str(w.message) for w in caught]


def test_known_warnings_are_dropped_and_others_kept() -> None:
    assert _warned(*NOISE, "something new") == ["something new"]


def test_known_log_lines_are_dropped_and_others_kept(caplog) -> None:
    quiet.install()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        rank_zero.info("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero.info("GPU available: False, used: False")
        logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").info(
            "`weights_only` was not set, defaulting to `False`.")
    assert "litlogger" not in caplog.text and "weights_only" not in caplog.text
    assert "GPU available" in caplog.text


def test_verbose_switch_shows_everything(monkeypatch) -> None:
    monkeypatch.setenv("FTLAB_VERBOSE", "1")
    assert quiet.verbose_requested(False)
    monkeypatch.setenv("FTLAB_VERBOSE", "0")
    assert not quiet.verbose_requested(False) and quiet.verbose_requested(True)
    quiet.install()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install(verbose=True)
        warnings.warn(NOISE[0], UserWarning)
    assert len(caught) == 1


def test_transformers_load_report_and_weights_bar_are_quiet(capfd, caplog) -> None:
    backbone = OmegaConf.load(PROJECT_ROOT / "conf/backbone/minilm.yaml")
    quiet.install()
    load_model(backbone, num_labels=2)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err + caplog.text and "Loading weights" not in err
    quiet.install(verbose=True)
    load_model(backbone, num_labels=2)
    assert "LOAD REPORT" in capfd.readouterr().err + caplog.text
