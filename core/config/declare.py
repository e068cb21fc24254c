"""Each config field's allowed values, declared once on the field and checked from there.

    steps: int = spec(25, range="(0, inf)")
    sampler: str = spec("ddim", choices=("ddim", "ddpm"), was="scheduler")

The declaration is dataclass field metadata: "range" (an interval, for every element of a tuple),
"choices", "length" (an interval for a tuple's element count), "check" (a function of one element
returning what is wrong with it, or None: for a rule no interval can say), and "key" / "was" (how
the field keys stages and runs: core.config.store.identity). `--set`, the app's widgets, the
pipeline, selection and the request checks all read it (core.config.checks: `field_range`,
`choices`, `check_value`). A numeric field that declares no range must be finite and >= 0, so a
field added later is range-checked without a declaration. Types come from the annotations.
"""
from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from core.errors import ConfigError

DEFAULT_RANGE = "[0, inf)"      # no config field is meaningfully negative


@dataclass(frozen=True)
class Range:
    """A closed or open interval of numbers, parsed from text such as "(0, 1]" or "[0, inf)"."""
    lo: float
    hi: float
    lo_open: bool
    hi_open: bool

    @classmethod
    @functools.lru_cache(maxsize=None)
    def parse(cls, text: str) -> "Range":
        lo, hi = (part.strip(" ([])") for part in text.split(","))
        return cls(float(lo), float(hi), text.strip()[0] == "(", text.strip()[-1] == ")")

    def __contains__(self, value: Any) -> bool:
        """True for a finite real number inside the interval (NaN and inf never are)."""
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            return False
        return math.isfinite(value) and (value > self.lo if self.lo_open else value >= self.lo) and \
            (value < self.hi if self.hi_open else value <= self.hi)

    def rule(self) -> str:
        """The interval as an error message says it: "> 0", ">= 0", "in [0, 1]"."""
        lo = _number(self.lo)
        if self.hi == math.inf:
            return f"> {lo}" if self.lo_open else f">= {lo}"
        return f"in {'(' if self.lo_open else '['}{lo}, {_number(self.hi)}{')' if self.hi_open else ']'}"


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


_UNSET = object()


def spec(default: Any, *, range: str | None = None, choices: tuple | None = None,
         length: str | None = None, check: Callable[[Any], str | None] | None = None,
         key: str | None = None, was: str | None = None, legacy: Any = _UNSET) -> Any:
    """A dataclass field with its declaration (see the module docstring). `legacy`: the value a
    saved config without the field ran with (it loads as that, not as today's default)."""
    metadata = {"range": range, "choices": choices, "length": length, "check": check, "key": key, "was": was}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if legacy is not _UNSET:
        metadata["legacy"] = legacy
    return field(default=default, metadata=metadata)


@functools.lru_cache(maxsize=None)
def declared_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def element_type(declared: Any) -> Any:
    """The type of one value of the field: a tuple field's element type, else the type itself."""
    return typing.get_args(declared)[0] if typing.get_origin(declared) is tuple else declared


def range_of(f: Any, declared: Any) -> Range | None:
    """The field's interval: its declared range, the default one for numbers, None otherwise."""
    if element_type(declared) not in (int, float):
        return None
    return Range.parse(f.metadata.get("range", DEFAULT_RANGE))


def check_fields(section: Any, name: str) -> None:
    """Every field of a config section against its declared type and declaration; ConfigError,
    one line naming the first bad field ("name.field")."""
    hints = declared_types(type(section))
    for f in fields(section):
        check_field(f, hints.get(f.name), f"{name}.{f.name}", getattr(section, f.name))


def check_field(f: Any, declared: Any, key: str, value: Any) -> None:
    element = element_type(declared)
    if typing.get_origin(declared) is tuple:
        if not isinstance(value, tuple):
            raise ConfigError(f"{key} expects a list of {_PLURAL.get(element, element)}, got {_short(value)}")
        items = value
        if "length" in f.metadata and len(value) not in Range.parse(f.metadata["length"]):
            raise ConfigError(f"{key} must hold a number of values {Range.parse(f.metadata['length']).rule()}, "
                              f"got {len(value)}")
    else:
        items = (value,)
    for item in items:
        if element in _TYPE_WORDS and not _is(item, element):
            what = f"a list of {_PLURAL[element]}" if items is value else _TYPE_WORDS[element]
            raise ConfigError(f"{key} expects {what}, got {_short(item)}")
        allowed = f.metadata.get("choices")
        if allowed is not None and item not in allowed:
            raise ConfigError(f"{key} must be {_either(allowed)}, got {_short(item)}")
        interval = range_of(f, declared)
        if interval is not None and item not in interval:
            raise ConfigError(f"{key} must be {interval.rule()}, got {_short(item)}")
        fault = f.metadata["check"](item) if "check" in f.metadata else None
        if fault:
            raise ConfigError(f"{key}: {fault}")


def _either(allowed: tuple) -> str:
    names = [repr(a) for a in allowed]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _short(value: Any, limit: int = 80) -> str:
    """A value as an error line shows it: repr, cut so that a huge value keeps the line short."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_TYPE_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _is(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):     # bool is an int to Python, never to a config
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
