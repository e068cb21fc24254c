"""Stratified, seeded splits and the split manifest downstream reads (data/splits.csv).

The manifest holds the whole labeled pool (train + val) and the test set; the few-label protocol
draws each label budget from the pool later (core.data.budget). The validation split is always carved
from labeled training data: model selection never sees test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.io import atomic_write_json, atomic_write_text
from core.workspace import Workspace

SPLIT_COLUMNS = ["path", "label", "class_name", "split"]
SPLITS = ("train", "val", "test")


def stratified_take(frame: pd.DataFrame, fraction: float, seed: int,
                    by: str = "class_name", min_per_class: int = 1) -> pd.Index:
    """Index of a seeded, per-class `fraction` of `frame` (each class keeps >= min_per_class rows
    when it has them). Same frame + fraction + seed -> same rows, whatever the row order."""
    if not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    keep: list = []
    for offset, (name, group) in enumerate(sorted(frame.groupby(by, sort=False), key=lambda g: str(g[0]))):
        # sort by path so the draw does not depend on file-system listing order
        ordered = group.sort_values("path") if "path" in group else group
        n = len(ordered)
        k = n if fraction >= 1 else min(n, max(min_per_class, int(round(n * fraction))))
        rng = np.random.default_rng([seed, offset, n])
        keep.extend(ordered.index[np.sort(rng.permutation(n)[:k])])
    return pd.Index(keep)


def split_off(frame: pd.DataFrame, fraction: float, seed: int, name: str,
              from_split: str = "train") -> pd.DataFrame:
    """Move a stratified `fraction` of rows in `from_split` to split `name` (returns a copy).
    Classes with a single image stay in `from_split` (they cannot be in both)."""
    frame = frame.copy()
    if fraction <= 0:
        return frame
    pool = frame[frame["split"] == from_split]
    multi = pool.groupby("class_name")["path"].transform("size") > 1
    moved = stratified_take(pool[multi], fraction, seed, min_per_class=1)
    frame.loc[moved, "split"] = name
    return frame


def finalize(frame: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Add integer labels in `classes` order and sort rows reproducibly."""
    index = {c: i for i, c in enumerate(classes)}
    out = frame.copy()
    out["label"] = out["class_name"].map(index).astype(int)
    order = {s: i for i, s in enumerate(SPLITS)}
    out = out.assign(_o=out["split"].map(order)).sort_values(["_o", "label", "path"])
    return out.drop(columns="_o").reset_index(drop=True)


def write_manifest(ws: Workspace, frame: pd.DataFrame, classes: list[str], protocol: dict) -> Path:
    """Write splits.csv (path,label,class_name,split), classes.json and split_protocol.json."""
    frame = finalize(frame, classes)
    missing = [s for s in ("train", "val", "test") if not (frame["split"] == s).any()]
    if "train" in missing:
        raise UserError("the labeled set has no training images after splitting")
    counts = frame.groupby(["split", "class_name"]).size().unstack(fill_value=0)
    atomic_write_json(ws.split_protocol_file, {
        **protocol, "classes": classes, "empty_splits": missing,
        "counts": {s: {c: int(v) for c, v in row.items()} for s, row in counts.iterrows()}})
    atomic_write_json(ws.classes_file, classes)
    stored = frame[SPLIT_COLUMNS].assign(path=ws.stored_paths(frame["path"]))
    atomic_write_text(ws.split_manifest, stored.to_csv(index=False))
    return ws.split_manifest


def read_protocol(ws: Workspace) -> dict:
    path = ws.split_protocol_file
    return json.loads(path.read_text()) if path.exists() else {}
