"""The schema's building blocks: a Range, a Spec (type, range, null allowed, choices) and the one-line check.

Every message has one shape, so a user can act on it without reading code:
`<full.dotted.key> must be <what is expected>, got <the value>` (+ where the value came from, + why, when useful).
Hydra hands a YAML/command-line `1` over as an int and `abc` as a str, so a float accepts an int, and nothing
accepts a bool as a number (True is an int in Python, never a learning rate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a number; `lo_open` / `hi_open` make a bound strict (> instead of >=)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# shorthands for the schema tables: gt(0) is "> 0", ge(1) is ">= 1", unit() is "in [0, 1)"
def gt(lo: float) -> Range:
    return Range(lo=lo, lo_open=True)


def ge(lo: float) -> Range:
    return Range(lo=lo)


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Range:
    return Range(lo, hi, lo_open, hi_open)


TYPE_NAMES = {int: "an int", float: "a float", bool: "a bool (true/false)", str: "a string", list: "a list"}


def is_type(value: Any, expected: type) -> bool:
    """isinstance with the config's rules: no bool as a number, an int is a float."""
    if expected in (int, float) and isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


@dataclass(frozen=True)
class Spec:
    """What one config key must hold. `items` checks each element of a list (and `length` its size)."""

    type: type
    range: Range | None = None
    nullable: bool = False
    choices: tuple[Any, ...] = ()
    items: Spec | None = None
    length: int | None = None
    required: bool = True
    why: str = ""   # appended to the message: what the key means, or what a valid value does

    def expected(self) -> str:
        what = f"one of {list(self.choices)}" if self.choices else TYPE_NAMES.get(self.type, self.type.__name__)
        if self.length is not None:
            what += f" of {self.length}"
        if self.range is not None:
            what += f" {self.range.describe()}"
        return f"null or {what}" if self.nullable else what


def fail(key: str, expected: str, value: Any, origin: str = "", why: str = "") -> ConfigError:
    """The one-line ConfigError of the schema: key, what is expected, the bad value, where it came from, why."""
    return ConfigError(f"{key} must be {expected}, got {value!r}{origin}{f'; {why}' if why else ''}")


def check(key: str, value: Any, spec: Spec, origin: str = "") -> None:
    """Raise the schema's ConfigError unless `value` (already resolved) satisfies `spec`."""
    if value is None:
        if spec.nullable:
            return
        raise fail(key, spec.expected(), value, origin, spec.why)
    if spec.choices:
        if value not in spec.choices:
            raise fail(key, spec.expected(), value, origin, spec.why)
        return
    if not is_type(value, spec.type):
        # a type error says only the type: the range (and its why) of a value of the wrong type is beside the point
        raise fail(key, ("null or " if spec.nullable else "") + TYPE_NAMES.get(spec.type, spec.type.__name__),
                   value, origin)
    if spec.range is not None and not spec.range.holds(value):
        expected = ("null or " if spec.nullable else "") + spec.range.describe()
        raise fail(key, expected, value, origin, spec.why)
    if spec.length is not None and len(value) != spec.length:
        raise fail(key, spec.expected(), value, origin, spec.why)
    if spec.items is not None:
        for i, item in enumerate(value):
            check(f"{key}[{i}]", item, spec.items, origin)
