"""One check of a request's parameters, shared by the CLI, the app's handlers and its named API.

A parameter that is a config field's value is checked against the field's declaration (type,
choices, range; never NaN or inf: core.config.checks.check_value). A config range says what a
saved config may hold; one request must also stay within what the lab serves at once (CAPS):
without them a single /regenerate asked for 100000 images and /grid for 5000 scales.
Every fault is a RequestError: one line naming the parameter, raised before anything runs.
"""
from __future__ import annotations

import math
from typing import Any, Sequence, get_origin

from core.config.checks import _declared, check_value
from core.errors import ConfigError, UserError

# the most one request may ask for, per config field (above these, a request is refused)
CAPS = {"sampling.guidance_scale": 100.0, "sampling.steps": 1000, "sampling.batch_size": 256,
        "pretrain.steps": 10_000_000, "pretrain.batch_size": 4096, "pretrain.lr": 1.0,
        "pretrain.checkpoint_every": 10_000_000, "pretrain.sample_every": 10_000_000,
        "selection.quota_per_class": 1_000_000}
MAX_IMAGES = 1024            # images one sampling request makes
MAX_SEED = 2 ** 32 - 1       # numpy / torch generators take seeds below 2**32
MAX_ITEMS = 64               # values in one list parameter (classes, guidance scales, checks)
MAX_TEXT = 4096              # characters in one text parameter


class RequestError(UserError):
    """A request parameter out of its declaration or caps (one line naming the parameter)."""


def request_value(name: str, value: Any, key: str) -> Any:
    """`value` of request parameter `name` as config field `key` ("sampling.eta") takes it, within
    the request cap of that field. Returns the typed value."""
    if isinstance(value, (list, tuple, dict, set)) and not _is_list_field(key):
        raise RequestError(f"{name}: expected a single value, got a {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise RequestError(f"{name}: text longer than {MAX_TEXT} characters")
    if isinstance(value, (list, tuple)) and len(value) > MAX_ITEMS:
        raise RequestError(f"{name}: at most {MAX_ITEMS} values, got {len(value)}")
    try:
        typed = check_value(key, value)
    except ConfigError as e:
        raise RequestError(f"{name}: {e}") from None
    cap = CAPS.get(key)
    if cap is not None and typed > cap:
        raise RequestError(f"{name}: at most {cap} in one request, got {brief(typed)}")
    return typed


def request_fields(section: str, values: dict) -> dict:
    """Values of one config section's fields as a request sends them ({"steps": 7, ...}), each
    checked by `request_value`; a name that is no field of the section is refused."""
    if not isinstance(values, dict):
        raise RequestError(f"{section}: expected named fields, got {brief(values)}")
    return {name: request_value(str(name), value, f"{section}.{name}") for name, value in values.items()}


def selection_request(threshold: Any, strategy: Any, quota: Any, realism: Any = None) -> tuple:
    """The selection rule one request asks for (the app's /refilter and /export_accepted), each
    value as its `selection` field takes it; `realism` None keeps the config's checks.
    Returns (threshold, strategy, quota, realism)."""
    return (request_value("threshold", threshold, "selection.threshold"),
            request_value("strategy", strategy, "selection.strategy"),
            request_value("quota", quota, "selection.quota_per_class"),
            None if realism is None else request_value("realism", realism, "selection.realism"))


def request_count(name: str, value: Any, most: int, least: int = 1) -> int:
    """A whole number in [least, most] (a whole float such as 4.0 is 4)."""
    number = _number(name, value)
    if not number.is_integer() or not least <= number <= most:
        raise RequestError(f"{name}: expected a whole number in [{least}, {most}], got {brief(value)}")
    return int(number)


def request_seed(name: str, value: Any, random_allowed: bool = True) -> int:
    """A seed in [0, 2**32 - 1]; -1 (draw one at random) where `random_allowed`."""
    return request_count(name, value, MAX_SEED, -1 if random_allowed else 0)


def request_text(name: str, value: Any, choices: Sequence[str] | None = None) -> str:
    """A text parameter: a string of at most MAX_TEXT characters, one of `choices` when given."""
    if not isinstance(value, str):
        raise RequestError(f"{name}: expected text, got {brief(value)}")
    if len(value) > MAX_TEXT:
        raise RequestError(f"{name}: text longer than {MAX_TEXT} characters")
    if choices is not None and value not in choices:
        listed = ", ".join(repr(c) for c in list(choices)[:8]) + (", ..." if len(choices) > 8 else "")
        raise RequestError(f"{name}: {brief(value)} is not one of {listed}")
    return value


def request_list(name: str, values: Any, check, most: int = MAX_ITEMS) -> list:
    """A list parameter of at most `most` values, each passed through `check(name, value)`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise RequestError(f"{name}: expected a list, got {brief(values)}")
    if len(values) > most:
        raise RequestError(f"{name}: at most {most} values, got {len(values)}")
    return [check(f"{name}[{i}]", v) for i, v in enumerate(values)]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{name}: expected a number, got {brief(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name}: expected a number, got {brief(value)}") from None
    if not math.isfinite(number):
        raise RequestError(f"{name}: expected a finite number, got {brief(value)}")
    return number


def _is_list_field(key: str) -> bool:
    section, _, field_name = key.partition(".")
    return get_origin(_declared(section, field_name)[1]) is tuple


def brief(value: Any) -> str:
    """repr(value), cut to 60 characters: an error message quotes what was sent, never all of it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
