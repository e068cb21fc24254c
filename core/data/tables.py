"""The data layer's public face: labeled splits and unlabeled pools as pandas tables.

Downstream stages read labeled data only through `load_splits` (data/splits.csv) and unlabeled
data only through `load_pools` (data/pools.csv); how those tables were made (demo builder,
ImageFolder, PathMNIST npz, slide tiling) is this package's business:
core.data.labeled (folders, npz), core.data.pools (unlabeled pools), core.data.tiling (slides, tissue mask),
core.data.splits (few-label protocol), core.data.demo (bundled demo), core.data.download (public sets).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.errors import BadImage
from core.data.images import scan_images
from core.data.labeled import npz_preview, scan_labeled
from core.data.tiling import is_slide_path, open_source, tissue_fraction
from core.workspace import Workspace


def load_splits(ws: Workspace) -> tuple[pd.DataFrame, list[str]]:
    """(frame with path,label,class_name,split in train/val/test; ordered class names)."""
    if not ws.split_manifest.exists():
        raise UserError(f"no labeled data in workspace {ws.root}: {ws.split_manifest} is missing "
                        "(run `python -m core data demo` or `python -m core run --labeled PATH`)")
    frame = pd.read_csv(ws.split_manifest)
    classes_file = ws.classes_file
    if classes_file.exists():
        classes = json.loads(classes_file.read_text())
    else:
        classes = list(frame.sort_values("label").drop_duplicates("label")["class_name"])
    return frame, classes


def load_pools(ws: Workspace) -> pd.DataFrame:
    """Unlabeled pre-training images: path, pool, weight (per-pool sampling weight)."""
    path = ws.pools_file
    if not path.exists():
        raise UserError(f"no unlabeled pools in workspace {ws.root}: {path} is missing "
                        "(run `python -m core data demo` or pass --unlabeled PATH)")
    return pd.read_csv(path)


def check(path: str | Path, max_pixels: int | None = None) -> dict:
    """What a data path holds, without writing anything: counts per class, image sizes, every
    skipped file with its reason (one over `max_pixels`, data.max_image_pixels, is not decoded),
    empty class folders. No usable image at all is a UserError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"path not found: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        return {"path": str(path), **npz_preview(path)}
    if path.is_file():
        return _check_file(path, max_pixels)
    has_class_dirs = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
    if has_class_dirs:
        scan = scan_labeled(path, max_pixels)
        frame = scan["frame"]
        per_class = frame.groupby(["split", "class_name"], dropna=False).size() \
            if scan["layout"] == "splits" else frame.groupby("class_name").size()
        classes = {("/".join(k) if isinstance(k, tuple) else k): int(v) for k, v in per_class.items()}
        for name in scan["empty_classes"]:
            classes[name] = 0
        skipped, empty, layout = scan["skipped"], scan["empty_classes"], scan["layout"]
    else:
        good, skipped = scan_images(path, max_pixels=max_pixels)
        if not good:
            raise UserError(f"no usable images in {path} ({len(skipped)} file(s) skipped)")
        frame = pd.DataFrame(good)
        classes, empty, layout = {}, [], "flat"
    sizes = Counter(f"{w}x{h}" for w, h in zip(frame["width"], frame["height"]))
    return {"path": str(path), "format": f"folder ({layout})", "images": int(len(frame)),
            "classes": dict(sorted(classes.items())), "sizes": dict(sizes.most_common()),
            "skipped": skipped, "empty_classes": empty}


def _check_file(path: Path, max_pixels: int | None) -> dict:
    try:
        source = open_source(path, max_pixels=max_pixels)
    except BadImage as e:
        raise UserError(f"{path}: {e}") from None
    thumb = source.thumbnail(512)
    return {"path": str(path), "format": "slide" if is_slide_path(path) else "image",
            "images": 1, "width": source.width, "height": source.height, "mpp": source.mpp,
            "tissue_fraction": round(tissue_fraction(thumb), 3), "classes": {}, "sizes":
            {f"{source.width}x{source.height}": 1}, "skipped": [], "empty_classes": []}
