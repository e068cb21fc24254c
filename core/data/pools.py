"""Unlabeled pre-training pools: folders of patches used in place, slides and large images tiled.

The paper pre-trains on three data sets at once; here each source is a pool with a weight, and
`pool_sampler_weights` gives per-row sampling weights so that each pool's share of the draws
equals its weight whatever its size (a big pool does not drown a small one).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import save_config
from core.errors import BadImage
from core.data.images import scan_images
from core.data.tables import load_pools, load_splits
from core.io import atomic_write_text
from core.data.tiling import LARGE_IMAGE_PIXELS, is_slide_path, tile_to_folder
from core.workspace import Workspace

POOL_COLUMNS = ["path", "pool", "weight"]
LABELED_POOL = "labeled_images_unlabeled"     # data.pool_labeled_images: the labeled set, labels unused


def parse_source(source) -> tuple[Path, float]:
    """'PATH', 'PATH:WEIGHT' (CLI form), or (PATH, WEIGHT) -> (path, weight > 0)."""
    if isinstance(source, (tuple, list)):
        path, weight = source
    else:
        text = str(source)
        match = re.fullmatch(r"(.+):([0-9]*\.?[0-9]+)", text)
        path, weight = (match.group(1), float(match.group(2))) if match and not Path(text).exists() \
            else (text, 1.0)
    weight = float(weight)
    if weight <= 0:
        raise UserError(f"pool weight must be > 0, got {weight} for {path}")
    return Path(path).expanduser(), weight


def _pool_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.name) or "pool"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def prepare_pools(ws: Workspace, cfg: LabConfig, sources, progress=None, stop=None) -> dict:
    """Index/tile every source into data/pools.csv (path,pool,weight).

    A folder tree: its patch-sized images are used in place (nothing copied or written there);
    its slides and images larger than LARGE_IMAGE_PIXELS are tiled at cfg.data.mpp into
    data/unlabeled/POOL/. A single slide or image file is tiled the same way. Unreadable files
    are skipped and listed. Returns {"pools": {name: count}, "skipped": [...], "notes": [...]}.

    Args:
        ws (`Workspace`): the workspace to write into.
        cfg (`LabConfig`): its `data` section (image_size, mpp, max_image_pixels).
        sources (`list`): "PATH", "PATH:WEIGHT" or (PATH, WEIGHT) per pool; weight > 0.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): called once per source done.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, tiling stops.

    Returns:
        `dict`: the summary above.

    Raises:
        UserError: no sources, a source not found, or a weight <= 0.
    """
    if not sources:
        raise UserError("no unlabeled sources given")
    ws.ensure()
    rows, skipped, notes, sizes, taken = [], [], [], {}, set()
    for k, source in enumerate(sources):
        path, weight = parse_source(source)
        if not path.exists():
            raise UserError(f"unlabeled source not found: {path}")
        name = _pool_name(path, taken)
        files = [path] if path.is_file() else None
        direct: list[str] = []
        to_tile: list[Path] = []
        if files is None:
            good, bad = scan_images(path, min_size=cfg.data.image_size // 2, max_pixels=cfg.data.max_image_pixels)
            skipped += bad
            to_tile += [Path(g["path"]) for g in good if g["width"] * g["height"] > LARGE_IMAGE_PIXELS]
            direct += [str(Path(g["path"]).resolve()) for g in good
                       if g["width"] * g["height"] <= LARGE_IMAGE_PIXELS]
            # scan_images skips slide extensions it cannot open with Pillow: pick them up here
            slides = [Path(s["path"]) for s in bad if is_slide_path(s["path"])]
            skipped = [s for s in skipped if not is_slide_path(s["path"])]
            to_tile += slides
        else:
            to_tile = files
        tiled = []
        for image in to_tile:
            if stop is not None and stop.is_set():
                break
            try:
                info = tile_to_folder(image, ws.unlabeled_dir / name, cfg.data.image_size,
                                      cfg.data.mpp, prefix=_pool_name(image, set()), stop=stop,
                                      max_pixels=cfg.data.max_image_pixels)
            except BadImage as e:
                skipped.append({"path": str(image), "reason": str(e)})
                continue
            if info["assumed_mpp"]:
                notes.append(f"{image}: states no microns-per-pixel; assumed {cfg.data.mpp} (no resampling)")
            tiled += info["paths"]
            if not info["paths"]:
                skipped.append({"path": str(image), "reason": "no tissue tile (background or ink only)"})
        paths = direct + tiled
        if not paths:
            raise UserError(f"no usable unlabeled images in {path}")
        rows += [{"path": p, "pool": name, "weight": weight} for p in paths]
        sizes[name] = len(paths)
        if progress:
            progress({"stage": "data", "step": k + 1, "total": len(sources), "pool": name})
    frame = pd.DataFrame(rows, columns=POOL_COLUMNS)
    atomic_write_text(ws.pools_file, frame.assign(path=ws.stored_paths(frame["path"])).to_csv(index=False))
    if ws.unlabeled_dir.exists():
        save_config(cfg, ws.unlabeled_dir)
    return {"pools": sizes, "skipped": skipped, "notes": notes}


def pool_sampler_weights(frame: pd.DataFrame) -> np.ndarray:
    """Per-row weights (sum 1) such that each pool's rows together weigh its share of the pool
    weights: feed to torch.utils.data.WeightedRandomSampler."""
    if frame.empty:
        raise UserError("no unlabeled images to sample from")
    if (frame["weight"] <= 0).any():
        raise UserError("pool weights must be > 0")
    pool_weight = frame.groupby("pool")["weight"].first()
    share = pool_weight / pool_weight.sum()
    counts = frame.groupby("pool")["path"].transform("size")
    weights = frame["pool"].map(share).to_numpy(dtype=np.float64) / counts.to_numpy(dtype=np.float64)
    return weights / weights.sum()


def pool_labeled_images(ws: Workspace) -> int:
    """Add every non-test labeled image to pools.csv, label dropped: what a budget does not label
    is the unlabeled data the method exists to exploit (pre-training reads no label). The pool
    is replaced, never appended twice, however often the data stage runs.

    Args:
        ws (`Workspace`): a workspace whose data/splits.csv exists (pools.csv may not yet).

    Returns:
        `int`: the images in the pool (train + val; test images never pre-train).
    """
    splits, _ = load_splits(ws)
    pool = splits[splits.split.isin(("train", "val"))]
    rows = pd.DataFrame({"path": pool["path"], "pool": LABELED_POOL, "weight": 1.0})
    if ws.pools_file.exists():
        others = load_pools(ws)
        rows = pd.concat([others[others["pool"] != LABELED_POOL], rows], ignore_index=True)
    atomic_write_text(ws.pools_file, rows.assign(path=ws.stored_paths(rows["path"])).to_csv(index=False))
    return len(pool)
