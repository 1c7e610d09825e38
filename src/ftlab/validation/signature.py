"""Check a config node against the constructor it will be passed to, before the object exists.

`method.*` is handed to the `_target_` class and `trainer.*` to `pl.Trainer`: their accepted keys and value types
are the constructor's signature and type hints, so they are read from there (no second list to keep in sync). An
`__init__` that takes `**kwargs` forwards them to its base class (`NxMADMM(rho, n, m, **kwargs)` ->
`ADMMSparsity.__init__`), so the walk continues up the MRO while it does. Types the config cannot hold (a
`Strategy` object) are not judged; ranges come from ftlab.validation.ranges.
"""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..errors import ConfigError
from .ranges import Bound
from .spec import TYPE_NAMES, fail, is_type

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_PLURAL = {int: "ints", float: "floats", str: "strings", bool: "bools"}


@dataclass(frozen=True)
class Param:
    name: str
    hint: Any          # the evaluated type hint; Any where there is none or it cannot be evaluated
    required: bool     # no default value
    owner: str         # "NxMADMM.__init__": where the user can read what the parameter means


def _hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # a hint naming a TYPE_CHECKING-only import: judge each parameter on its own
        hints = {}
        for name, annotation in getattr(function, "__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, function.__globals__) if isinstance(annotation, str) else annotation
            except Exception:
                hints[name] = Any
        return hints


def accepted_params(cls: type) -> dict[str, Param]:
    """Keyword parameters that `cls(**config)` accepts, following **kwargs up the MRO."""
    params: dict[str, Param] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if klass is object:
            break
        if init is None:
            continue
        hints = _hints(init)
        forwards = False
        for p in list(inspect.signature(init).parameters.values())[1:]:  # [0] is self
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in params:
                owner = f"{klass.__name__}.__init__"
                params[p.name] = Param(p.name, hints.get(p.name, Any), p.default is p.empty, owner)
        if not forwards:
            break
    return params


def matches(value: Any, hint: Any) -> bool:
    """Whether a resolved config value can be passed for a parameter hinted `hint` (lenient where unknowable)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint in TYPE_NAMES:
        return is_type(value, hint)
    if origin in _SEQUENCES or hint in _SEQUENCES:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # an object type (a Strategy, a Path): a config cannot be judged against it here


def describe(hint: Any) -> str:
    """`float | None` -> "null or a float"; `Sequence[str]` -> "a list of strings"."""
    if hint is None or hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        literals = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        parts = [describe(a) for a in args if a is not type(None) and typing.get_origin(a) is not Literal]
        parts += [f"one of {literals}"] if literals else []  # Lightning's precision: three Literals, one list
        return ("null or " if type(None) in args else "") + " or ".join(parts)
    if origin is Literal:
        return f"one of {list(args)}"
    if hint in TYPE_NAMES:
        return TYPE_NAMES[hint]
    if origin in _SEQUENCES or hint in _SEQUENCES:
        return f"a list of {_PLURAL[args[0]]}" if args and args[0] in _PLURAL else "a list"
    return f"a {getattr(hint, '__name__', str(hint))}"


def check_against(prefix: str, values: dict[str, Any], cls: type, ranges: dict[str, Bound],
                  origins: dict[str, str] | None = None, where: str = "") -> None:
    """ConfigError for the first key of `values` that `cls(**values)` would not accept: unknown, missing, of the
    wrong type, or out of `ranges`. `prefix` is the config node's dotted name (method, trainer)."""
    params = accepted_params(cls)
    origins = origins or {}
    for key in values:
        if key not in params:
            accepted = ", ".join(params) if params else f"none ({cls.__name__} takes no parameters)"
            raise ConfigError(
                f"{prefix}.{key} is not a parameter of {where or cls.__name__}; accepted {prefix}.* keys: {accepted}"
            )
    for name, param in params.items():
        key = f"{prefix}.{name}"
        if name not in values:
            if param.required:
                raise ConfigError(f"{key} is required by {param.owner} but missing; set +{key}=...")
            continue
        value = values[name]
        if not matches(value, param.hint):
            raise fail(key, f"{describe(param.hint)} ({param.owner})", value, origins.get(name, ""))
        bound = ranges.get(name)
        if bound is not None and is_type(value, float) and not bound.range.holds(value):
            raise fail(key, bound.range.describe(), value, origins.get(name, ""), bound.why)
