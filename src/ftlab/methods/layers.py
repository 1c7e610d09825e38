"""Which layers a method acts on (block-linear roles, `layers` settings), swapping one for a subclass in place, and
setting every dropout rate.

Shared by Mixout and DPS, which both act on "every Linear of the encoder + pooler + classifier" in their official code
(`MIX:mixout/mixlinear.py` via the HF example, `DPS:transformers/models/bert/modeling_bert.py`), and both zero the
backbone's dropout. A `layers` setting is either

* `"all_linear"`: every `nn.Linear` in the model (for BERT-style encoders: the six block linears of every block, the
  pooler and the classification head; embeddings and LayerNorms are not Linear), or
* a list of roles: any of the block roles `q, k, v, attn_out, ffn1, ffn2` (resolved by `backbones.block_linears`),
  `pooler` (the backbone config's `pooler`) and `head` (its `head` list).
"""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig
from torch import nn

from ..backbones import ROLES, block_linears
from ..errors import ConfigError

EXTRA_ROLES = ("pooler", "head")


def check_roles(roles: str | Sequence[str], method: str, backbone: DictConfig | None = None,
                key: str = "roles") -> list[str]:
    """Block-linear roles (method.<key>) as a list, or a ConfigError naming the valid ones: those `backbone` defines
    when given (at setup), else every role a backbone may define (at construction, before any model exists)."""
    roles = [roles] if isinstance(roles, str) else list(roles)
    defined = list(backbone.block_linears) if backbone is not None else list(ROLES)
    unknown = [r for r in roles if r not in defined]
    if roles and not unknown:
        return roles
    problem = f"unknown role(s) {unknown}" if unknown else "no roles given"
    scope = (f"backbone '{backbone.name}' defines {defined} (modules {dict(backbone.block_linears)})"
             if backbone is not None else f"valid roles are {defined}")
    raise ConfigError(f"{method}: method.{key}: {problem}; {scope}")


def check_layers(layers: str | Sequence[str], method: str) -> str | list[str]:
    """Validate a `layers` setting early (at method construction), before any model exists."""
    if isinstance(layers, str):
        if layers != "all_linear":
            raise ConfigError(
                f"{method}: layers={layers!r} is not valid; use 'all_linear' or a list of roles from "
                f"{list(ROLES) + list(EXTRA_ROLES)}, e.g. method.layers=[q,v,head]"
            )
        return layers
    roles = list(layers)
    unknown = [r for r in roles if r not in ROLES + EXTRA_ROLES]
    if not roles or unknown:
        raise ConfigError(
            f"{method}: layers={roles} {'has unknown roles ' + str(unknown) if unknown else 'is empty'}; "
            f"valid roles: {list(ROLES) + list(EXTRA_ROLES)}, or 'all_linear'"
        )
    return roles


def select_linears(model: nn.Module, backbone: DictConfig | None, layers: str | Sequence[str], method: str) -> dict[str, nn.Linear]:
    """Full module name -> nn.Linear for a `layers` setting (see the module docstring), in model order."""
    layers = check_layers(layers, method)
    if layers == "all_linear":
        found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    else:
        if backbone is None:
            raise ConfigError(f"{method}: layers={list(layers)} needs the backbone config to resolve roles")
        wanted: set[str] = set()
        block_roles = [r for r in layers if r in ROLES]
        if block_roles:
            wanted |= set(block_linears(model, backbone, block_roles))
        if "pooler" in layers:
            if not backbone.get("pooler"):
                raise ConfigError(
                    f"{method}: layers includes 'pooler' but backbone '{backbone.name}' has none (pooler: null); "
                    f"drop 'pooler' from method.layers"
                )
            wanted.add(backbone.pooler)
        if "head" in layers:
            wanted |= set(backbone.get("head") or [])
        modules = dict(model.named_modules())
        missing = sorted(n for n in wanted if n not in modules)
        if missing:
            raise ConfigError(f"{method}: backbone '{backbone.name}' names layers {missing} that the model does not have")
        found = {n: m for n, m in model.named_modules() if n in wanted}
    not_linear = sorted(n for n, m in found.items() if not isinstance(m, nn.Linear))
    if not_linear:
        raise ConfigError(f"{method}: layers {not_linear} are not nn.Linear (GPT-2 Conv1D is not supported); choose other roles")
    if not found:
        raise ConfigError(f"{method}: no nn.Linear layer selected by layers={layers!r}; this backbone may use Conv1D (GPT-2)")
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` is (a dotted path)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the rate of every nn.Dropout in the model (HF encoders read `self.dropout.p` for attention dropout too).

    Returns how many dropout modules were changed.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            count += 1
    return count
