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


def from_dict(data: dict) -> LabConfig:
    """Rebuild a LabConfig from `to_dict` output (tuples restored from JSON lists)."""
    kwargs: dict[str, Any] = {}
    data = migrate_sections(data)
    for f in fields(LabConfig):
        if f.name not in data:
            continue
        if f.name == "preset":
            kwargs["preset"] = data["preset"]
            continue
        sub_type = f.default_factory  # type: ignore[attr-defined]
        kwargs[f.name] = _build(sub_type, migrate(f.name, dict(data[f.name])))
    return LabConfig(**kwargs).validate()


def _build(cls: Any, values: dict) -> Any:
    known = {f.name: f for f in fields(cls)}
    renamed = {f.metadata["was"]: f.name for f in fields(cls) if "was" in f.metadata}
    values = {renamed.get(k, k): v for k, v in values.items()}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown field(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    # a field saved configs predate takes the value their stages ran with, not today's default
    values = {**{n: f.metadata["legacy"] for n, f in known.items() if "legacy" in f.metadata}, **values}
    out = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        out[name] = tuple(value) if isinstance(default, tuple) else value
    return cls(**out)


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
    return from_dict(json.loads(Path(path).read_text()))
