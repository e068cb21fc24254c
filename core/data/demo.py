"""The bundled demo: real H&E from assets/, labeled by hand-drawn regions, built in seconds.

Target (labeled): skin.tif (normal skin, H&E, ~1 um/px) with classes drawn in
assets/skin_annotations.json; train/val/test come from disjoint vertical bands of the image.
Pre-training pools (unlabeled): the OpenSlide CMU-1 small region (H&E skin, SVS, 0.499 um/px):
tissue at the target scale and 1.3x coarser, and its glass and tissue edges, in overlapping tiles
(DEMO_POOLS). With `data.pool_labeled_images` on (the default, as for every user's data) the run
adds the target's train and val bands to the pools, labels unused; off, the pools are the other
slide only (the strict setting).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from core.config.lab_config import LabConfig
from core.config.store import config_hash, save_config
from core.io import atomic_dir, atomic_write_json, atomic_write_text, save_png
from core.data.pools import LABELED_POOL, pool_labeled_images
from core.data.splits import SPLITS, write_manifest
from core.data.tiling import open_source, tile_grid, tissue_fraction
from core.workspace import Workspace

ASSETS = Path(__file__).resolve().parents[2] / "assets"
ANNOTATIONS = ASSETS / "skin_annotations.json"


@dataclass(frozen=True)
class DemoPool:
    """One unlabeled pre-training pool cut from a bundled image other than the labeled target."""
    name: str
    file: str
    weight: float                         # share of pre-training draws
    source_mpp: float | None = None       # when the file states no scale (an estimate, said as such)
    scale: float = 1.0                    # tiles cut at scale x data.mpp: a second magnification
    stride: float = 0.5                   # x image_size: overlapping tiles
    tissue: tuple[float, float] = (0.5, 1.01)   # tissue fraction range [lo, hi) a tile must have
    max_tiles: int = 0                    # > 0: evenly spaced subsample


# Pools of tissue-only tiles fail the target: 393 tissue-only tiles at one scale, 11% of them IHC,
# never showed the models glass (the target's "background" class: 0 accepted samples), overfit one
# magnification, and painted the IHC image's brown DAB into dermis and stratum corneum samples. So:
# overlapping H&E tiles at the target scale and 1.3x coarser (skin.tif's own scale is an estimate),
# plus glass and tissue edges. ihc.png (assets/LICENSES.md) stays bundled for the tiling tests.
DEMO_POOLS = (DemoPool("cmu_he_skin", "cmu_small_region.svs", 0.65),
              DemoPool("cmu_he_skin_coarse", "cmu_small_region.svs", 0.25, scale=1.3),
              DemoPool("cmu_glass_and_edges", "cmu_small_region.svs", 0.1, tissue=(0.0, 0.5), max_tiles=300))
MIN_CLASS_FRACTION = 0.7    # a patch gets a class when >= 70% of it lies inside that class's region
MAX_PER_CLASS = 120         # per split and class: keeps the demo balanced and small
BUILD_VERSION = 2           # bump when the builder changes what it writes


def load_annotations(path: str | Path = ANNOTATIONS) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("image", "mpp", "classes", "splits"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    return data


def label_map(annotations: dict, size: tuple[int, int], scale: float) -> tuple[np.ndarray, list[str]]:
    """Rasterise the class polygons (source pixels * scale) into an int map: 0 = unlabeled,
    k = classes[k-1]. Later classes win where polygons touch."""
    classes = list(annotations["classes"])
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(classes, start=1):
        for polygon in annotations["classes"][name]:
            draw.polygon([(x * scale, y * scale) for x, y in polygon], fill=k)
    return np.asarray(canvas), classes


def demo_patches(cfg: LabConfig, annotations: dict | None = None, stride: int | None = None,
                 max_per_class: int = MAX_PER_CLASS) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Patch boxes of the labeled target: (frame x,y,size in resampled pixels, box_* in source
    pixels, class_name, split), the resampled image, class names. Nothing is written."""
    annotations = annotations or load_annotations()
    size, mpp = cfg.data.image_size, cfg.data.mpp
    scale = float(annotations["mpp"]) / mpp
    with Image.open(ASSETS / annotations["image"]) as im:
        source = im.convert("RGB")
    resampled = source.resize((round(source.width * scale), round(source.height * scale)),
                              Image.Resampling.LANCZOS)
    labels, classes = label_map(annotations, resampled.size, scale)
    stride = stride or max(1, size // 4)
    rows = []
    for split in SPLITS:
        x_start, x_end = (round(v * scale) for v in annotations["splits"][split])
        for y in range(0, labels.shape[0] - size + 1, stride):
            for x in range(x_start, x_end - size + 1, stride):
                window = labels[y:y + size, x:x + size]
                counts = np.bincount(window.ravel(), minlength=len(classes) + 1)[1:]
                k = int(counts.argmax())
                if counts[k] >= MIN_CLASS_FRACTION * size * size:
                    rows.append({"x": x, "y": y, "size": size, "class_name": classes[k],
                                 "split": split})
    frame = pd.DataFrame(rows)
    frame = _cap_per_class(frame, max_per_class, cfg.data.seed)
    for col, v in (("box_x0", "x"), ("box_y0", "y")):
        frame[col] = (frame[v] / scale).round().astype(int)
    frame["box_x1"] = ((frame["x"] + size) / scale).round().astype(int)
    frame["box_y1"] = ((frame["y"] + size) / scale).round().astype(int)
    return frame, np.asarray(resampled), classes


def _cap_per_class(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """Evenly spaced subsample (deterministic; spread over the band, not one corner) per split+class."""
    parts = []
    for _, group in frame.groupby(["split", "class_name"], sort=True):
        if len(group) > cap:
            group = group.iloc[np.linspace(0, len(group) - 1, cap).round().astype(int)]
        parts.append(group)
    return pd.concat(parts).reset_index(drop=True)


def build_demo(ws: Workspace, cfg: LabConfig, force: bool = False, progress=None) -> dict:
    """Write the demo's labeled PNGs, splits.csv, classes.json, unlabeled pools and pools.csv.

    Idempotent: when data/demo.json holds this config's hash the build is skipped. Each output
    folder is written whole into a temp folder and swapped in, so a killed build leaves the old
    data or none, never half. Returns counts per split/class, pool sizes and the elapsed time.

    Args:
        ws (`Workspace`): the workspace to write into.
        cfg (`LabConfig`): its `data.image_size`, `data.mpp` and `data.seed` shape the data (and its hash).
        force (`bool`, *optional*, defaults to `False`): rebuild even when demo.json matches.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): called once per pool written.

    Returns:
        `dict`: "hash", "classes", "counts" (split -> class -> images), "pools", "seconds" (also written
        to data/demo.json, with the config beside it) and "skipped" (True when nothing was rebuilt).
    """
    import time
    start = time.perf_counter()
    ws.ensure()
    marker = ws.demo_data_marker
    key = config_hash(cfg.data.image_size, cfg.data.mpp, cfg.data.seed, BUILD_VERSION,
                      *([True] if cfg.data.pool_labeled_images else []))
    if not force and marker.exists() and ws.split_manifest.exists():
        previous = json.loads(marker.read_text())
        if previous.get("hash") == key:
            return {**previous, "skipped": True}
    annotations = load_annotations()
    frame, image, classes = demo_patches(cfg, annotations)
    labeled = _write_labeled(ws, cfg, frame, image, annotations)
    write_manifest(ws, labeled, classes, {
        "source": "demo: assets/skin.tif, hand-annotated regions, spatially disjoint bands",
        "seed": cfg.data.seed,
        "bands": {s: annotations["splits"][s] for s in SPLITS}, "mpp": cfg.data.mpp})
    pools = _write_pools(ws, cfg, progress)
    if cfg.data.pool_labeled_images:
        pools[LABELED_POOL] = pool_labeled_images(ws)
    save_config(cfg, ws.data_dir)
    counts = labeled.groupby(["split", "class_name"]).size().unstack(fill_value=0)
    result = {"hash": key, "classes": classes,
              "counts": {s: {c: int(v) for c, v in row.items()} for s, row in counts.iterrows()},
              "pools": pools, "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_json(marker, result)
    return {**result, "skipped": False}


def _write_labeled(ws: Workspace, cfg: LabConfig, frame: pd.DataFrame, image: np.ndarray,
                   annotations: dict) -> pd.DataFrame:
    source = str((ASSETS / annotations["image"]).resolve())
    final = ws.labeled_dir
    rel_paths = []
    with atomic_dir(final) as tmp:
        for row in frame.itertuples():
            rel = Path(row.split) / row.class_name / f"skin_x{row.box_x0}_y{row.box_y0}.png"
            patch = Image.fromarray(image[row.y:row.y + row.size, row.x:row.x + row.size])
            save_png(patch, tmp / rel, {
                "source": source, "class_name": row.class_name, "split": row.split,
                "box": [row.box_x0, row.box_y0, row.box_x1, row.box_y1], "mpp": cfg.data.mpp,
                "source_mpp": annotations["mpp"]})
            rel_paths.append(rel)
        out = frame.assign(path=[str(final / r) for r in rel_paths])
        # where each patch came from, in source pixels: shows (and tests) the bands are disjoint
        boxes = out[["path", "class_name", "split", "box_x0", "box_y0", "box_x1", "box_y1"]]
        atomic_write_text(Workspace.patches_of(tmp),
                          boxes.assign(path=ws.stored_paths(boxes["path"])).to_csv(index=False))
        save_config(cfg, tmp)
    return out[["path", "class_name", "split"]]


def _write_pools(ws: Workspace, cfg: LabConfig, progress=None) -> dict:
    rows, sizes = [], {}
    for pool in DEMO_POOLS:
        final = ws.unlabeled_dir / pool.name
        with atomic_dir(final) as tmp:
            names = _write_pool_tiles(pool, cfg, tmp)
            save_config(cfg, tmp)
        rows += [{"path": str(final / n), "pool": pool.name, "weight": pool.weight} for n in names]
        sizes[pool.name] = len(names)
        if progress:
            progress({"stage": "data", "step": len(sizes), "total": len(DEMO_POOLS), "pool": pool.name})
    frame = pd.DataFrame(rows, columns=["path", "pool", "weight"])
    atomic_write_text(ws.pools_file, frame.assign(path=ws.stored_paths(frame["path"])).to_csv(index=False))
    return sizes


def _write_pool_tiles(pool: DemoPool, cfg: LabConfig, out: Path) -> list[str]:
    """The pool's tiles as PNGs (provenance in the text chunk); returns their file names."""
    size, mpp = cfg.data.image_size, cfg.data.mpp * pool.scale
    source = open_source(ASSETS / pool.file, pool.source_mpp)
    lo, hi = pool.tissue
    tiles = [(x, y, w, patch) for x, y, w, _, patch in
             tile_grid(source, size, mpp, stride=max(1, round(size * pool.stride)), min_tissue=lo)
             if tissue_fraction(patch) < hi]
    if pool.max_tiles and len(tiles) > pool.max_tiles:
        tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, pool.max_tiles).round().astype(int)]
    names = []
    for x, y, w, patch in tiles:
        names.append(f"{pool.name}_x{x}_y{y}.png")
        save_png(Image.fromarray(patch), out / names[-1], {
            "source": str((ASSETS / pool.file).resolve()), "box": [x, y, w, w], "mpp": mpp,
            "source_mpp": source.mpp, "image_size": size})
    return names
