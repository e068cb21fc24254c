"""`--set` overrides (text) and the app's typed values applied as each field's declared type, the
questions other code asks of a field's declaration (`field_range`, `choices`, `check_value`), and
the migration of configs saved under older names.

Types come from the dataclass annotations, allowed values from each field's declaration
(core.config.declare); bad values get one line naming the field (ConfigError).
"""
from __future__ import annotations

import json
import typing
from dataclasses import fields, is_dataclass, replace
from typing import Any, Iterable, Mapping

from core.config.declare import Range, check_field, declared_types, range_of
from core.config.lab_config import LabConfig
from core.errors import ConfigError


def _declared(section: Any, name: str) -> tuple[Any, Any, str]:
    """(the dataclass field, its declared type, "section.name") of a section given by name
    ("sampling"), class or instance."""
    if isinstance(section, str):
        known = {f.name: f.default_factory for f in fields(LabConfig) if f.name != "preset"}
        if section not in known:
            raise ConfigError(f"unknown config section {section!r}")
        cls, label = known[section], section
    else:
        cls = section if isinstance(section, type) else type(section)
        label = getattr(cls, "section", "") or cls.__name__
    found = {f.name: f for f in fields(cls)}
    if name not in found:
        raise ConfigError(f"unknown field {label}.{name}")
    return found[name], declared_types(cls)[name], f"{label}.{name}"


def field_range(section: Any, name: str) -> Range | None:
    """The interval a numeric field's values must lie in (None for a non-numeric field).

    Args:
        section: the section's name in LabConfig ("sampling"), or its class or an instance.
        name: the field's name ("eta").
    Returns:
        a `Range` (`lo`, `hi`, `lo_open`, `hi_open`; `value in r` is False for NaN and inf).
    """
    f, declared, _ = _declared(section, name)
    return range_of(f, declared)


def choices(section: Any, name: str) -> tuple | None:
    """The values a field allows (None when it declares no choices), e.g. ("ddim", "ddpm")."""
    f, _, _ = _declared(section, name)
    return f.metadata.get("choices")


def check_value(key: str, value: Any) -> Any:
    """`value` as field `key` ("section.name") takes it: typed as `--set` and the app's widgets
    are, then checked against the field's declaration.

    Returns:
        the typed value (e.g. 5 for the int field's 5.0).
    Raises:
        ConfigError: one line naming the key and what is wrong.
    """
    section, _, name = str(key).partition(".")
    f, declared, label = _declared(section, name)
    typed = typed_value(value, declared, label)
    check_field(f, declared, label, typed)
    return typed


def parse_value(raw: str, declared: Any, key: str) -> Any:
    """The --set text as the field's declared type (JSON first, else plain text); values of the
    wrong type are left as they are for check_fields to name."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if typing.get_origin(declared) is tuple:
        element = typing.get_args(declared)[0]
        if isinstance(value, str):
            value = [_json_or_text(v.strip()) for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]
        return tuple(_as(v, element) for v in value)
    if declared is bool and isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value).lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise ConfigError(f"{key} expects true/false, got {raw!r}")
    if declared is str and not isinstance(value, str):
        return raw
    return _as(value, declared)


def typed_value(value: Any, declared: Any, key: str) -> Any:
    """A value from the app's widgets as the field's declared type: text as `--set` text, a list
    as a tuple, a whole float as an int where the field is one (number boxes may send floats)."""
    if isinstance(value, str):
        return parse_value(value, declared, key)
    if typing.get_origin(declared) is tuple:
        element = typing.get_args(declared)[0]
        return tuple(_as(v, element) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if declared is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return _as(value, declared)


def apply_overrides(cfg: Any, overrides: Iterable[str] | Mapping[str, Any]) -> Any:
    """Apply `section.field=value` strings (values parsed as JSON, else as plain strings), or a
    {"section.field": value} mapping of typed values; the result is validated (ConfigError)."""
    if isinstance(overrides, Mapping):
        items = [(key, value, f"{key}={value}") for key, value in overrides.items()]
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.field=value")
            items.append((*item.split("=", 1), item))
    for key, value, item in items:
        if "." not in key:
            raise ConfigError(f"override key {key!r} must be section.field, e.g. pretrain.steps")
        section, name = key.split(".", 1)
        if section in RENAMED_SECTIONS:
            raise ConfigError(f"config section {section!r} is now " + " and ".join(
                repr(n) for n in RENAMED_SECTIONS[section]) + f": set {' or '.join(f'{n}.{name}' for n in RENAMED_SECTIONS[section])}")
        if not hasattr(cfg, section) or not is_dataclass(getattr(cfg, section)):
            raise ConfigError(f"unknown config section {section!r} in override {item!r}")
        sub = getattr(cfg, section)
        if key in MOVED:
            raise ConfigError(f"{key} is gone: use {MOVED[key]}")
        if name not in {f.name for f in fields(sub)}:
            raise ConfigError(f"unknown field {key!r} in override {item!r}")
        value = typed_value(value, declared_types(type(sub))[name], key)
        cfg = replace(cfg, **{section: replace(sub, **{name: value})})
    return cfg.validate()


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _as(value: Any, kind: Any) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


MOVED = {"data.label_fraction": "experiment.label_fractions (one label budget for every model of a run)",
         "sampling.scheduler": "sampling.sampler", "filter_classifier.budget": "filter_classifier.compute",
         "downstream.budget": "downstream.compute"}
# sections saved under an older name: one term per concept (docs/architecture.md, glossary)
RENAMED_SECTIONS = {"classifier": ("latent_classifier",), "classify": ("filter_classifier", "downstream")}


def migrate_sections(data: dict) -> dict:
    """A saved config with older section names, under today's: `classifier` is the latent
    classifier; `classify` configured both the filter classifier and the grid's classifiers."""
    data = dict(data)
    for old, new in RENAMED_SECTIONS.items():
        if old in data:
            values = data.pop(old)
            for name in new:
                data.setdefault(name, dict(values))
    return data


def migrate(section: str, values: dict) -> dict:
    """Configs saved before the one-label-budget protocol carried data.label_fraction, which cut
    the labeled set before experiment.label_fractions cut it again. At 1.0 it did nothing and is
    dropped; any other value made a workspace whose arms saw different labels: refused."""
    if section == "data" and "label_fraction" in values:
        old = values.pop("label_fraction")
        if float(old) != 1.0:
            raise ConfigError(f"this config has data.label_fraction={old}, the old protocol that gave "
                              "the augmented arm more labels than its baseline; make the workspace again "
                              "with experiment.label_fractions")
    return values
