"""Every file kind users really have: converted to RGB where sound, otherwise a clear reason."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import BadImage
from core.data.images import ImageDataset, load_rgb, scan_images, to_pil, to_tensor
from image_files import he_array, make_bad_folder


def test_every_kind_is_rgb_or_skipped_with_reason(tmp_path):
    expected = make_bad_folder(tmp_path / "mixed")
    good, skipped = scan_images(tmp_path / "mixed")
    got_good = {r["path"].rsplit("/", 1)[1] for r in good}
    got_skipped = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in skipped}
    assert got_good == {n for n, v in expected.items() if v == "ok"}
    for name, fragment in expected.items():
        if fragment != "ok":
            assert fragment in got_skipped[name], (name, got_skipped[name])
    for name in got_good:
        im = load_rgb(tmp_path / "mixed" / name)
        assert im.mode == "RGB"


def test_conversions_are_sound(tmp_path):
    make_bad_folder(tmp_path)
    assert load_rgb(tmp_path / "rgba.png").getpixel((3, 3)) == (255, 255, 255)   # glass is white
    rgb16 = np.asarray(load_rgb(tmp_path / "rgb16.tif"))
    assert np.abs(rgb16.astype(int) - he_array()).max() <= 1          # 16 -> 8 bit keeps colour
    gray16 = np.asarray(load_rgb(tmp_path / "gray16.tif"))
    assert gray16.shape == (24, 32, 3) and gray16.max() > gray16.min()
    rotated = load_rgb(tmp_path / "exif_rotated.jpg")
    assert rotated.size == (24, 32)                                     # width/height swapped
    cmyk = np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(cmyk - he_array()).mean() < 12


def test_load_rgb_raises_badimage_with_reason(tmp_path):
    make_bad_folder(tmp_path)
    with pytest.raises(BadImage, match="empty file"):
        load_rgb(tmp_path / "empty.png")
    with pytest.raises(BadImage, match="too small"):
        load_rgb(tmp_path / "tiny.png")
    with pytest.raises(BadImage, match="unreadable"):
        load_rgb(tmp_path / "truncated.png")


def test_tensor_roundtrip_and_dataset_skips_broken(tmp_path):
    make_bad_folder(tmp_path)
    im = load_rgb(tmp_path / "good.PNG")
    x = to_tensor(im, 16)
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    exact = to_pil(torch.stack([to_tensor(im.resize((8, 8)), 8)]))[0]
    assert np.abs(np.asarray(exact, int) - np.asarray(im.resize((8, 8)), int)).max() <= 1
    ds = ImageDataset([tmp_path / "empty.png", tmp_path / "good.PNG"], [0, 1], image_size=8)
    x0, y0 = ds[0]                       # broken file replaced by the next good one and recorded
    assert x0.shape == (3, 8, 8) and y0 == 1 and "empty file" in ds.failed[str(tmp_path / "empty.png")]


def test_stain_jitter_scales_light_within_its_range():
    from core.data.images import stain_jitter
    glass = torch.full((64, 3, 8, 8), 0.9)                     # [-1, 1]: 95% transmitted light
    g = torch.Generator().manual_seed(0)
    out = stain_jitter(glass, g, 0.2)
    light = (out + 1) / 2 / 0.95
    assert out.shape == glass.shape and out.dtype == glass.dtype
    assert light.min() >= 0.8 * (1 - 0.2 / 3) - 1e-5 and light.max() <= 1.05 * (1 + 0.2 / 3) + 1e-5
    assert light.amin((1, 2, 3)).min() < 0.85                  # darker glass is drawn, as the target has
    assert float(light.std(dim=(2, 3)).max()) < 1e-5           # one gain per image and channel: flat stays flat
    assert torch.equal(stain_jitter(glass, g, 0.0), glass)


def test_an_image_over_the_pixel_cap_is_skipped_before_decoding(tmp_path, monkeypatch):
    """A 30000 x 30000 PNG (over Pillow's own hard limit) and a 13000 x 13000 one (under it) are
    skipped with their reason and the scan goes on; neither is decoded."""
    import tracemalloc

    from image_files import bomb_png
    folder = tmp_path / "lab"
    folder.mkdir()
    assert bomb_png(folder / "huge.png", 30000) < 200_000
    bomb_png(folder / "big.png", 13000)
    for k in range(2):
        Image.fromarray(he_array()).save(folder / f"ok{k}.png")
    tracemalloc.start()
    good, skipped = scan_images(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sorted(r["path"].rsplit("/", 1)[1] for r in good) == ["ok0.png", "ok1.png"]
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in skipped}
    assert "13000x13000 is over data.max_image_pixels = 100,000,000" in reasons["big.png"]
    assert "900,000,000 pixels is over data.max_image_pixels" in reasons["huge.png"]
    assert peak < 50_000_000                    # decoding big.png alone would take 169 MB
    with pytest.raises(BadImage, match="too large"):
        load_rgb(folder / "big.png")
    # the cap is the config's (data.max_image_pixels): a 24 x 32 image passes 768 and not 767
    assert load_rgb(folder / "ok0.png", max_pixels=768).size == (32, 24)
    assert scan_images(folder, max_pixels=767)[0] == []
