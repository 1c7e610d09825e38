"""Reading one dotted key of a composed config: the resolved value, and where it came from (an interpolation)."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ..errors import ConfigError

ABSENT = object()  # the key is not in the config at all (distinct from a null value)


def resolved(cfg: DictConfig, key: str) -> Any:
    """The resolved value of `key` as plain Python (lists and dicts, not ListConfig), or ABSENT.

    An interpolation that cannot be resolved, or a `???` value, is a ConfigError naming the key."""
    try:
        value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=True, throw_on_resolution_failure=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key} has no value (???); set it, e.g. on the command line: {key}=...") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key} could not be resolved: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def origin(cfg: DictConfig, key: str) -> str:
    """` (from ${task.lr})` when `key` is an interpolation, so a message about optim.lr points at what the user set."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not OmegaConf.is_dict(parent) or leaf not in parent or not OmegaConf.is_interpolation(parent, leaf):
        return ""
    raw = OmegaConf.to_container(parent, resolve=False)[leaf]
    return f" (from {raw})"
