"""The data layer's public face: labeled splits and unlabeled pools as pandas tables.

Downstream stages read labeled data only through `load_splits` (data/splits.csv) and unlabeled
data only through `load_pools` (data/pools.csv); how those tables were made (demo builder,
ImageFolder, PathMNIST npz, slide tiling) is this module's business.
"""
from __future__ import annotations

import json

import pandas as pd

from core.cli import UserError
from core.images import BadImage, ImageDataset, load_rgb  # noqa: F401  (re-exported)
from core.workspace import Workspace

SPLIT_COLUMNS = ["path", "label", "class_name", "split"]
POOL_COLUMNS = ["path", "pool", "weight"]


def load_splits(ws: Workspace) -> tuple[pd.DataFrame, list[str]]:
    """(frame with path,label,class_name,split in train/val/test; ordered class names)."""
    if not ws.split_manifest.exists():
        raise UserError(f"no labeled data in workspace {ws.root}: {ws.split_manifest} is missing "
                        "(run `python -m core data demo` or `python -m core run --labeled PATH`)")
    frame = pd.read_csv(ws.split_manifest)
    classes_file = ws.data_dir / "classes.json"
    if classes_file.exists():
        classes = json.loads(classes_file.read_text())
    else:
        classes = list(frame.sort_values("label").drop_duplicates("label")["class_name"])
    return frame, classes


def load_pools(ws: Workspace) -> pd.DataFrame:
    """Unlabeled pre-training images: path, pool, weight (per-pool sampling weight)."""
    path = ws.data_dir / "pools.csv"
    if not path.exists():
        raise UserError(f"no unlabeled pools in workspace {ws.root}: {path} is missing "
                        "(run `python -m core data demo` or pass --unlabeled PATH)")
    return pd.read_csv(path)
