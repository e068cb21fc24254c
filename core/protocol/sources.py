"""What a workspace's data is made from, remembered (data/sources.json), so a run without
`--labeled` goes on with the same data instead of building the demo over it; switching a
workspace that has models to other data needs an explicit flag and archives them first."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from core.data.splits import read_protocol
from core.errors import UserError
from core.io import atomic_write_json
from core.workspace import Workspace

DEMO = "demo"
# what was trained on the old data: moved to archive/ on a switch, never overwritten
TRAINED = ("models", "budgets", "checkpoints", "metrics", "samples", "synthetic", "accepted", "stages", "results")


def remembered(ws: Workspace) -> dict | None:
    """{"labeled": PATH or "demo", "test": PATH or None, "unlabeled": [PATH, ...]}, or None when
    the workspace holds no data yet. A workspace made before its sources were remembered says
    its labeled and test folders in its split protocol; its pools are then unknown (None)."""
    if ws.data_sources_file.exists():
        return json.loads(ws.data_sources_file.read_text())
    protocol = read_protocol(ws)
    source = str(protocol.get("source") or "")
    if not source:
        return None
    if source.startswith(DEMO):
        return sources()
    return {"labeled": source, "test": protocol.get("test_source"), "unlabeled": None}


def sources(labeled=None, test=None, unlabeled=()) -> dict:
    def norm(p):
        return str(Path(p).expanduser().resolve())
    return {"labeled": norm(labeled) if labeled else DEMO, "test": norm(test) if test else None,
            "unlabeled": [norm(u) for u in unlabeled or ()]}


def choose_sources(ws: Workspace, labeled=None, test=None, unlabeled=(), switch: bool = False,
                   demo: bool = False) -> tuple:
    """The (labeled, test, unlabeled) a run uses, remembered for the next one.

    No `labeled`: the workspace's remembered sources (the demo for a new workspace, or with
    `demo`: the demo). Other sources than remembered, in a workspace that has models: UserError
    unless `switch`, which first moves everything trained on the old data to archive/.
    Returns (labeled or None for the demo, test or None, tuple of unlabeled)."""
    saved = remembered(ws)
    if labeled is None and not demo:
        if saved is not None and saved["unlabeled"] is None:
            raise UserError(f"workspace {ws.root} was made from {saved['labeled']} before it remembered its "
                            f"data sources; name them again: --labeled {saved['labeled']}"
                            + (f" --test {saved['test']}" if saved["test"] else "")
                            + " and --unlabeled as the first time")
        asked = saved or sources()
    else:
        asked = sources(labeled, test, unlabeled)
    if saved is not None and not _same(saved, asked) and has_models(ws):
        if not switch:
            raise UserError(f"workspace {ws.root} has models trained on {_describe(saved)}; this run names "
                            f"{_describe(asked)}. Pass --switch-data to move them to "
                            f"{ws.root / 'archive'}/ and start over on the new data (nothing is deleted)")
        archive_trained(ws, f"data-{time.strftime('%Y%m%d-%H%M%S')}")
    atomic_write_json(ws.data_sources_file, asked)
    return (None if asked["labeled"] == DEMO else asked["labeled"], asked["test"], tuple(asked["unlabeled"]))


def _same(saved: dict, asked: dict) -> bool:
    """The same sources (pools unknown for a workspace older than sources.json: not compared)."""
    keys = ("labeled", "test") if saved["unlabeled"] is None else ("labeled", "test", "unlabeled")
    return all(saved[k] == asked[k] for k in keys)


def has_models(ws: Workspace) -> bool:
    root = Workspace(ws.root)
    folders = [root.models_dir, *sorted((root.root / "budgets").glob("*/models"))]
    return any(p.is_file() for folder in folders if folder.is_dir() for p in folder.rglob("*"))


def archive_trained(ws: Workspace, name: str) -> Path:
    """Move what was trained or made from the workspace's data into archive/NAME/ (each folder
    renamed whole: on one file system nothing is copied, and nothing is deleted)."""
    dest = ws.root / "archive" / name
    dest.mkdir(parents=True, exist_ok=True)
    for folder in TRAINED:
        src = ws.root / folder
        if src.exists():
            shutil.move(str(src), str(dest / folder))
    return dest


def _describe(s: dict) -> str:
    if s["labeled"] == DEMO:
        return "the bundled demo data"
    extra = (f", test {s['test']}" if s["test"] else "") + (f", unlabeled {', '.join(s['unlabeled'])}"
                                                            if s.get("unlabeled") else "")
    return f"{s['labeled']}{extra}"
