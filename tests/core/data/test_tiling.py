"""Tissue mask (glass and pen ink rejected), physical-scale tiling of images and slides, pools."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from core.errors import UserError
from core.io import read_png_params
from core.data.pools import parse_source, pool_sampler_weights, prepare_pools
from core.data.tables import load_pools
from core.data.tiling import ink_mask, open_source, tile_to_folder, tissue_mask
from core.workspace import Workspace

ASSETS = Path(__file__).resolve().parents[3] / "assets"
GLASS, PINK, PURPLE = (242, 240, 244), (226, 140, 190), (120, 60, 150)
GREEN_INK, BLUE_INK, BLACK_INK = (40, 150, 120), (30, 50, 170), (15, 15, 20)
IHC_HEMATOXYLIN = (150, 165, 200)      # pale blue counterstain of IHC: tissue, not ink


def _swatch(colour, n=8):
    return np.full((n, n, 3), colour, np.uint8)


@pytest.mark.parametrize("colour,tissue", [(GLASS, False), (PINK, True), (PURPLE, True),
                                           (GREEN_INK, False), (BLUE_INK, False),
                                           (BLACK_INK, False), (IHC_HEMATOXYLIN, True),
                                           ((255, 255, 255), False)])
def test_tissue_mask_rejects_glass_and_ink(colour, tissue):
    assert tissue_mask(_swatch(colour)).all() == tissue
    assert not tissue_mask(_swatch(colour)).any() or tissue


def test_ink_mask_only_flags_ink():
    for colour in (GREEN_INK, BLUE_INK, BLACK_INK):
        assert ink_mask(_swatch(colour)).all()
    for colour in (PINK, PURPLE, GLASS, IHC_HEMATOXYLIN):
        assert not ink_mask(_swatch(colour)).any()


def _slide_like(rng, h=256, w=384):
    """Left third glass, middle third H&E-like tissue, right third tissue crossed by green ink."""
    a = np.empty((h, w, 3), np.uint8)
    a[:] = GLASS
    tissue = np.where(rng.random((h, w, 1)) < 0.3, PURPLE, PINK)
    a[:, w // 3:] = tissue[:, w // 3:]
    a[:, 2 * w // 3:][(np.arange(h) % 16 < 10)] = GREEN_INK
    return np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)


def test_tiles_keep_tissue_only_at_target_scale(tmp_path):
    a = _slide_like(np.random.default_rng(0))
    # 0.5 um/px stated as 20000 px/cm; target 1.0 um/px at 16 px -> each tile covers 32 source px
    tifffile.imwrite(tmp_path / "scan.tif", a, photometric="rgb", resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")
    src = open_source(tmp_path / "scan.tif")
    assert src.mpp == pytest.approx(0.5)
    out = tile_to_folder(tmp_path / "scan.tif", tmp_path / "tiles", image_size=16, target_mpp=1.0)
    assert out["tiles"] > 0 and not out["assumed_mpp"]
    w = a.shape[1]
    for p in out["paths"]:
        params = read_png_params(p)
        x, y, bw, bh = params["box"]
        assert (bw, bh) == (32, 32)
        assert w // 3 - 8 <= x and x + bw <= 2 * w // 3 + 8   # never glass, never the inked third
        assert Image.open(p).size == (16, 16)
    # every tissue-only grid position is found (stride = tile size)
    expected = len(range(0, a.shape[0] - 31, 32)) * len([x for x in range(0, w - 31, 32)
                                                        if x >= w // 3 and x + 32 <= 2 * w // 3])
    assert out["tiles"] >= expected
    # the same scan as a tiled (pyramid-style) TIFF is read region by region through openslide
    tifffile.imwrite(tmp_path / "tiled.tif", a, photometric="rgb", tile=(128, 128),
                     resolution=(20000, 20000), resolutionunit="CENTIMETER")
    tiled = tile_to_folder(tmp_path / "tiled.tif", tmp_path / "tiles2", image_size=16, target_mpp=1.0)
    assert open_source(tmp_path / "tiled.tif").mpp == pytest.approx(0.5)
    assert [Path(p).name.split("_", 1)[1] for p in tiled["paths"]] == \
        [Path(p).name.split("_", 1)[1] for p in out["paths"]]


def test_unknown_scale_is_reported_and_resume_keeps_tiles(tmp_path):
    Image.fromarray(_slide_like(np.random.default_rng(1))).save(tmp_path / "plain.png")
    first = tile_to_folder(tmp_path / "plain.png", tmp_path / "t", 16, 1.0)
    assert first["assumed_mpp"] and first["source_mpp"] is None
    stamp = {p: Path(p).stat().st_mtime_ns for p in first["paths"]}
    again = tile_to_folder(tmp_path / "plain.png", tmp_path / "t", 16, 1.0)
    assert again["paths"] == first["paths"]
    assert all(Path(p).stat().st_mtime_ns == t for p, t in stamp.items())   # not rewritten


def test_svs_slide_is_read_with_its_stated_mpp(tmp_path):
    src = open_source(ASSETS / "cmu_small_region.svs")
    assert src.mpp == pytest.approx(0.499) and (src.width, src.height) == (2220, 2967)
    out = tile_to_folder(ASSETS / "cmu_small_region.svs", tmp_path, 32, 2.0, max_tiles=4)
    assert out["tiles"] == 4
    assert read_png_params(out["paths"][0])["box"][2] == round(32 * 2.0 / 0.499)


def test_pools_mix_folders_and_large_images_with_weights(tmp_path, tiny_cfg):
    patches = tmp_path / "patches" / "sub"
    patches.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(_slide_like(rng, 40, 40)[:, 14:]).save(patches / f"p{i}.png")
    (patches / "broken.png").write_bytes(b"\x89PNG broken")
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, _slide_like(rng, 1100, 1100), photometric="rgb",
                     resolution=(10000, 10000), resolutionunit="CENTIMETER")     # 1 um/px
    ws = Workspace(tmp_path / "ws")
    before = sorted(p.name for p in (tmp_path / "patches").rglob("*"))
    result = prepare_pools(ws, tiny_cfg, [(tmp_path / "patches", 3.0), f"{big}:1"])
    assert sorted(p.name for p in (tmp_path / "patches").rglob("*")) == before   # nothing written there
    frame = load_pools(ws)              # pools.csv, its workspace paths stored relative, read absolute
    assert list(frame.columns) == ["path", "pool", "weight"]
    stored = pd.read_csv(ws.data_dir / "pools.csv")["path"]
    assert stored[frame.pool == "big"].str.startswith("data/unlabeled/big/").all()
    assert result["pools"]["patches"] == 6 and result["pools"]["big"] > 0
    assert any("broken.png" in s["path"] for s in result["skipped"])
    assert all(Path(p).parent == ws.unlabeled_dir / "big" for p in frame[frame.pool == "big"].path)
    w = pool_sampler_weights(frame)
    share = pd.Series(w).groupby(frame["pool"]).sum()
    assert share["patches"] == pytest.approx(0.75) and share["big"] == pytest.approx(0.25)


def test_pool_source_errors_name_the_path(tmp_path, tiny_cfg):
    assert parse_source("some/dir:2.5") == (Path("some/dir"), 2.5)
    with pytest.raises(UserError, match="not found: .*nowhere"):
        prepare_pools(Workspace(tmp_path), tiny_cfg, [tmp_path / "nowhere"])
    with pytest.raises(UserError, match="weight must be > 0"):
        parse_source((tmp_path, 0))
