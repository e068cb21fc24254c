"""A LabConfig as JSON and as the key of stages and runs: `save_config` / `load_config` (saved
configs of older layouts migrate on load), `identity` and `config_hash`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.config.checks import migrate, migrate_sections
from core.config.lab_config import LabConfig
from core.errors import ConfigError
from core.workspace import Workspace


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: Any) -> LabConfig:
    """Rebuild a LabConfig from `to_dict` output (tuples restored from JSON lists); ConfigError,
    one line naming the key, for anything that is not such a dict (never a silent default)."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object of config sections, got {_kind(data)}")
    data = migrate_sections(data)
    sections = {f.name: f for f in fields(LabConfig)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(sections)}")
    if "preset" not in data:
        raise ConfigError("the key 'preset' is missing (a saved config names the preset it was made from)")
    kwargs: dict[str, Any] = {"preset": data["preset"]}
    for name, f in sections.items():
        if name == "preset" or name not in data:
            continue
        if not isinstance(data[name], dict):
            raise ConfigError(f"{name} must be an object of fields, got {_kind(data[name])}")
        sub_type = f.default_factory  # type: ignore[attr-defined]
        kwargs[name] = _build(sub_type, name, migrate(name, dict(data[name])))
    return LabConfig(**kwargs).validate()


def _build(cls: Any, section: str, values: dict) -> Any:
    known = {f.name: f for f in fields(cls)}
    renamed = {f.metadata["was"]: f.name for f in fields(cls) if "was" in f.metadata}
    values = {renamed.get(k, k): v for k, v in values.items()}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown field(s) for {section}: {', '.join(sorted(unknown))}")
    # a field saved configs predate takes the value their stages ran with, not today's default
    values = {**{n: f.metadata["legacy"] for n, f in known.items() if "legacy" in f.metadata}, **values}
    out = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        # a JSON list becomes the field's tuple; anything else stays as it is, for the field's
        # declaration to name ("expects a list of integers, got 8")
        out[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return cls(**out)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), f"the number {value}" if isinstance(value, (int, float)) else type(value).__name__)


def identity(section: Any) -> dict:
    """A config section's fields as they key stages and runs (core.protocol.experiment). Fields with
    metadata key="never" change speed, not results, and are left out; key="if_set" fields only
    count when they differ from their default, so adding such a field keeps every existing
    workspace's stage markers and finished grid runs valid; a field whose default is not what
    older workspaces ran with names that value as "legacy" (it counts when it differs from that).
    A renamed field keys under the name it was saved with ("was"), so renaming keeps them valid too."""
    out = dataclasses.asdict(section)
    for f in fields(section):
        how = f.metadata.get("key")
        unset = f.metadata.get("legacy", f.default)
        if how == "never" or (how == "if_set" and getattr(section, f.name) == unset):
            out.pop(f.name)
        elif "was" in f.metadata:
            out[f.metadata["was"]] = out.pop(f.name)
    return out


def config_hash(*parts: Any) -> str:
    """Stable short hash of configs / plain values (dataclasses, dicts, strings, numbers)."""
    def norm(p: Any) -> Any:
        return dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p
    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(cfg: Any, folder: str | Path, name: str | None = None) -> Path:
    """Write the config that made a folder beside it, atomically (`name`: LAB_CONFIG in model folders)."""
    from core.io import atomic_write_text
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    path = Path(folder) / name if name else Workspace.config_of(folder)
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def load_config(path: str | Path) -> LabConfig:
    """The LabConfig saved at `path`. Raises ConfigError, one line naming the file, the key and
    the fault, for a file that is not JSON, not a config, or holds a wrong-typed value."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
