"""The bundled demo: real H&E, hand-annotated classes, spatially disjoint splits, one scale."""
from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.config.presets import preset
from core.data.tables import load_pools, load_splits
from core.data.pools import LABELED_POOL, pool_sampler_weights
from core.data.demo import ASSETS, DEMO_POOLS, MIN_CLASS_FRACTION, build_demo, label_map, load_annotations
from core.io import read_png_params
from core.workspace import Workspace


def test_assets_are_small_and_licensed():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file()
                and "demo_models" not in p.parts)
    assert total < 15 * 2**20
    licenses = (ASSETS / "LICENSES.md").read_text()
    for name in ("cmu_small_region.svs", "skin.tif", "ihc.png", "skin_annotations.json"):
        assert (ASSETS / name).exists() and name in licenses


def test_manifest_contract(tiny_workspace):
    frame, classes = load_splits(tiny_workspace)
    assert list(frame.columns) == ["path", "label", "class_name", "split"]
    assert classes == ["background", "stratum_corneum", "epidermis", "dermis"]
    assert set(frame.split) == {"train", "val", "test"}
    for split, cls in product(("train", "val", "test"), classes):      # every class in every split
        assert ((frame.split == split) & (frame.class_name == cls)).sum() >= 10, (split, cls)
    assert (frame.label == frame.class_name.map(classes.index)).all()
    assert 300 <= (frame.split == "train").sum() <= 600
    for row in frame.sample(20, random_state=0).itertuples():
        path = Path(row.path)
        assert path.is_absolute() and path.parent == tiny_workspace.labeled_dir / row.split / row.class_name
        assert Image.open(path).size == (32, 32)
    assert json.loads((tiny_workspace.data_dir / "config.json").read_text())["preset"] == "tiny"


def test_splits_are_spatially_disjoint(tiny_workspace):
    patches = pd.read_csv(tiny_workspace.labeled_dir / "patches.csv")
    bands = load_annotations()["splits"]
    for row in patches.itertuples():                      # each patch lies wholly in its band
        x0, x1 = bands[row.split]
        assert x0 <= row.box_x0 and row.box_x1 <= x1
    boxes = {s: patches[patches.split == s][["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy()
             for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        A, B = boxes[a][:, None, :], boxes[b][None, :, :]
        overlap_x = np.minimum(A[..., 2], B[..., 2]) > np.maximum(A[..., 0], B[..., 0])
        overlap_y = np.minimum(A[..., 3], B[..., 3]) > np.maximum(A[..., 1], B[..., 1])
        assert not (overlap_x & overlap_y).any(), f"{a} and {b} patches overlap"


def test_patch_labels_match_the_annotation(tiny_workspace):
    annotations = load_annotations()
    labels, classes = label_map(annotations, (1280, 960), 1.0)
    patches = pd.read_csv(tiny_workspace.labeled_dir / "patches.csv").sample(60, random_state=1)
    assert not patches["path"].str.startswith("/").any()     # stored relative to the workspace
    patches["path"] = tiny_workspace.resolved_paths(patches["path"])
    for row in patches.itertuples():
        window = labels[row.box_y0:row.box_y1, row.box_x0:row.box_x1]
        inside = (window == classes.index(row.class_name) + 1).mean()
        assert inside >= MIN_CLASS_FRACTION - 0.03, (row.path, inside)   # 0.03: resampling rounding
        params = read_png_params(row.path)
        assert params["box"] == [row.box_x0, row.box_y0, row.box_x1, row.box_y1]
        assert params["source"].endswith("skin.tif") and params["mpp"] == 2.0


def test_background_patches_are_glass_and_tissue_patches_are_not(tiny_workspace):
    from core.data.tiling import tissue_fraction
    frame, _ = load_splits(tiny_workspace)
    for cls, lo, hi in (("background", 0.0, 0.2), ("dermis", 0.6, 1.0), ("epidermis", 0.6, 1.0)):
        paths = frame[frame.class_name == cls].path.head(15)
        fractions = [tissue_fraction(np.asarray(Image.open(p))) for p in paths]
        assert lo <= float(np.mean(fractions)) <= hi, (cls, fractions)


def test_pools_exclude_the_target_and_mix_by_weight(tiny_workspace):
    pools = load_pools(tiny_workspace)
    pools = pools[pools.pool != LABELED_POOL]          # the target's own bands: the test below
    assert set(pools.pool) == {pool.name for pool in DEMO_POOLS}
    sources = {read_png_params(p)["source"] for p in pools.path}
    assert sources and not any(s.endswith("skin.tif") for s in sources)   # target excluded
    assert pools.groupby("pool").size().min() >= 20
    share = pd.Series(pool_sampler_weights(pools)).groupby(pools.pool).sum()
    for pool in DEMO_POOLS:
        assert share[pool.name] == pytest.approx(pool.weight / sum(p.weight for p in DEMO_POOLS))
    params = read_png_params(pools.path.iloc[0])
    assert params["mpp"] == 2.0 and params["source_mpp"] in (0.499, 0.5)


@pytest.mark.parametrize("pool_labeled", [True, False])
def test_demo_run_pools_the_targets_train_and_val_bands_never_test(tmp_path, pool_labeled):
    """data.pool_labeled_images (default on): the target's non-test bands pre-train, labels unused,
    exactly once however often the data stage runs; off: the other slide only (strict)."""
    from core.config.checks import apply_overrides
    from core.data.pools import pool_labeled_images
    cfg = apply_overrides(preset("tiny"), [f"data.pool_labeled_images={str(pool_labeled).lower()}"])
    ws = Workspace(tmp_path).ensure()
    for force in (False, True):
        build_demo(ws, cfg, force=force)
    splits = load_splits(ws)[0]
    for _ in range(2):                                  # a user-data run pools them again: no duplicates
        pools = load_pools(ws)
        target = pools[pools.pool == LABELED_POOL]
        assert set(pools.pool) - {LABELED_POOL} == {pool.name for pool in DEMO_POOLS}
        if not pool_labeled:
            assert target.empty
            return
        assert sorted(target.path) == sorted(splits[splits.split != "test"].path)
        assert not set(pools.path) & set(splits[splits.split == "test"].path)
        pool_labeled_images(ws)


def test_demo_preset_is_one_physical_scale_and_rebuild_is_skipped(tmp_path):
    """How long the build and the skipped rebuild take: benchmarks/demo_data.py."""
    ws = Workspace(tmp_path)
    cfg = preset("demo")
    first = build_demo(ws, cfg)
    assert not first["skipped"]
    patches = pd.read_csv(ws.labeled_dir / "patches.csv")
    assert ((patches.box_x1 - patches.box_x0) == 64).all()     # 64 px at 1 um/px = 64 um, like tiny
    assert Image.open(ws.root / patches.path.iloc[0]).size == (64, 64)
    assert build_demo(ws, cfg)["skipped"]
