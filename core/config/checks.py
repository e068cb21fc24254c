"""Type and range checks for config fields, and overrides (`--set` text or the app's typed
values) applied as each field's declared type.

Driven by the dataclass annotations and one RANGES table, so a field added to core/config.py is
checked without code here; bad values get one line naming the field (ConfigError).
"""
from __future__ import annotations

import functools
import json
import math
import typing
from dataclasses import fields, is_dataclass, replace
from typing import Any, Iterable, Mapping

from core.errors import ConfigError

# Allowed interval of numeric fields ("section.field"; tuples: every element). A numeric field
# not listed here must be finite and >= 0 (no field is meaningfully negative), so a field added
# later is range-checked without being listed. Types come from the dataclass annotations.
RANGES: dict[str, str] = {
    "data.val_fraction": "[0, 0.5]", "data.test_fraction": "(0, 1)",
    "data.image_size": "(0, inf)", "data.mpp": "(0, inf)",
    "autoencoder.lr": "(0, inf)", "autoencoder.block_out_channels": "(0, inf)",
    "pretrain.lr": "(0, inf)", "pretrain.ema_decay": "[0, 1]", "pretrain.beta_start": "(0, 1)",
    "pretrain.beta_end": "(0, 1)", "pretrain.block_out_channels": "(0, inf)",
    "pretrain.attention_resolutions": "(0, inf)", "pretrain.attention_head_dim": "(0, inf)",
    "latent_classifier.lr": "(0, inf)", "latent_classifier.finetune_lr": "(0, inf)",
    "latent_classifier.block_out_channels": "(0, inf)", "latent_classifier.attention_resolutions": "(0, inf)",
    "sampling.eta": "[0, 1]", "selection.threshold": "[0, 1]",
    "selection.calibration_quantile": "[0, 1]",
    **{f"{s}.{k}": v for s in ("filter_classifier", "downstream") for k, v in (
        ("lr", "(0, inf)"), ("label_smoothing", "[0, 1)"), ("steps", "(0, inf)"), ("evals", "(0, inf)"),
        ("epochs", "(0, inf)"), ("stain_jitter", "[0, 1)"), ("min_val_per_class", "(0, inf)"))},
    # a fraction in (0, 1] or a whole number of images per class (ExperimentConfig.validate)
    "experiment.label_fractions": "(0, inf)", "experiment.synthetic_ratios": "(0, inf)",
    "experiment.bootstrap": "(0, inf)",
    "autoencoder.checkpoints_total_limit": "(0, inf)", "latent_classifier.checkpoints_total_limit": "(0, inf)",
}


def check_fields(section: Any, name: str) -> None:
    """Every field of a config section against its declared type and its RANGES interval;
    ConfigError naming the first bad field."""
    hints = declared_types(type(section))
    for f in fields(section):
        key, value = f"{name}.{f.name}", getattr(section, f.name)
        declared = hints.get(f.name)
        if typing.get_origin(declared) is tuple:
            element = typing.get_args(declared)[0]
            if not isinstance(value, tuple):
                raise ConfigError(f"{key} expects a list of {_PLURAL.get(element, element)}, got {value!r}")
            items = value
        else:
            element, items = declared, (value,)
        for item in items:
            if element in _TYPE_WORDS and not _is(item, element):
                what = f"a list of {_PLURAL[element]}" if items is value else _TYPE_WORDS[element]
                raise ConfigError(f"{key} expects {what}, got {item!r}")
            if element in (int, float):
                _check_range(key, item)


_TYPE_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _is(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):     # bool is an int to Python, never to a config
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _check_range(key: str, value: float) -> None:
    spec = RANGES.get(key, "[0, inf)")
    lo_text, hi_text = (part.strip(" ([])") for part in spec.split(","))
    lo, hi = float(lo_text), float(hi_text)
    ok = math.isfinite(value) and (value > lo if spec[0] == "(" else value >= lo) and \
        (value < hi if spec[-1] == ")" else value <= hi)
    if not ok:
        if hi == math.inf:
            rule = f"> {lo_text}" if spec[0] == "(" else f">= {lo_text}"
        else:
            rule = f"in {spec}"
        raise ConfigError(f"{key} must be {rule}, got {value}")


@functools.lru_cache(maxsize=None)
def declared_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
