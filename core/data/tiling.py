"""Large images and whole-slide images -> fixed-size patches at one physical scale.

Every source is resampled to the target microns-per-pixel (cfg.data.mpp) before it is cut, so
a 64 px patch covers the same tissue area whatever scanner or magnification made the file.
A tissue mask drops glass background (bright, unsaturated) and pen ink (green / blue / black
marker) — slides such as OpenSlide CMU-1 carry green ink at the tissue edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from core.data.images import SLIDE_EXTS, load_rgb
from core.errors import BadImage

LARGE_IMAGE_PIXELS = 1024 * 1024   # plain images bigger than this are tiled, smaller ones used whole


def is_slide_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SLIDE_EXTS


# ---------------------------------------------------------------- tissue mask

def hsv_arrays(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue in degrees, saturation 0..1, value 0..1) of an (H, W, 3) uint8 array."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float32)
    return hsv[..., 0] * (360.0 / 255.0), hsv[..., 1] / 255.0, hsv[..., 2] / 255.0


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Pen ink: H&E is pink..purple (hue ~270..360 and 0..20 deg); green/cyan marker falls in hue
    70..190, blue marker in 190..250 but strongly saturated (IHC hematoxylin is also blue, with
    saturation ~0.15-0.25, and must stay tissue); black marker is very dark. Hand-written: no
    library in the stack ships a histology ink detector (histolab has one but pins old deps)."""
    hue, sat, val = hsv_arrays(rgb)
    green_ink = (hue >= 70) & (hue < 190) & (sat > 0.15)
    blue_ink = (hue >= 190) & (hue <= 250) & (sat > 0.35)
    colored_ink = (green_ink | blue_ink) & (val > 0.1)
    black_ink = val < 0.15
    return colored_ink | black_ink


def tissue_mask(rgb: np.ndarray, bright: float = 0.85, min_saturation: float = 0.08) -> np.ndarray:
    """True where a pixel is stained tissue: not glass (bright and unsaturated) and not ink."""
    _, sat, val = hsv_arrays(rgb)
    background = ((val > bright) & (sat < min_saturation)) | (sat < 0.04)
    return ~background & ~ink_mask(rgb)


def tissue_fraction(rgb: np.ndarray) -> float:
    return float(tissue_mask(rgb).mean())


def ink_fraction(rgb: np.ndarray) -> float:
    return float(ink_mask(rgb).mean())


# ---------------------------------------------------------------- sources with a known scale

@dataclass
class Source:
    """A readable image and its scale; `read(x, y, w, h, out)` returns an (out, out, 3) uint8 patch
    covering the level-0 box (x, y, w, h)."""
    path: Path
    width: int
    height: int
    mpp: float | None
    read: Callable[[int, int, int, int, int], np.ndarray]
    thumbnail: Callable[[int], np.ndarray]


def open_source(path: str | Path, mpp: float | None = None, max_pixels: int | None = None) -> Source:
    """Open a slide (openslide) or a plain image; `mpp` overrides what the file states. A plain
    image is decoded whole, so one over `max_pixels` (data.max_image_pixels) is a BadImage from
    its header; a slide is read by region and has no cap."""
    path = Path(path)
    if is_slide_path(path) or _is_pyramid_tiff(path):
        return _open_slide(path, mpp)
    return _open_plain(path, mpp, max_pixels)


def _is_pyramid_tiff(path: Path) -> bool:
    """Tiled (pyramidal) TIFFs go through openslide, which reads regions without loading the
    whole image; stripped TIFFs (e.g. skin.tif) are plain images."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        import openslide
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:  # no openslide or unreadable header: treat as a plain image
        return False


def _open_slide(path: Path, mpp: float | None) -> Source:
    try:
        import openslide
        slide = openslide.OpenSlide(str(path))
    except Exception as e:  # openslide raises its own error types and OSError for bad files
        raise BadImage(f"unreadable slide ({type(e).__name__}: {e})") from None
    stated = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    width, height = slide.dimensions

    def read(x: int, y: int, w: int, h: int, out: int) -> np.ndarray:
        level = slide.get_best_level_for_downsample(max(w, h) / out)
        ds = slide.level_downsamples[level]
        region = slide.read_region((x, y), level, (max(1, round(w / ds)), max(1, round(h / ds))))
        return _fit(_flatten_rgba(region), out)

    def thumbnail(size: int) -> np.ndarray:
        return np.asarray(slide.get_thumbnail((size, size)).convert("RGB"))

    return Source(path, width, height, mpp or (float(stated) if stated else None), read, thumbnail)


def _open_plain(path: Path, mpp: float | None, max_pixels: int | None) -> Source:
    rgb = load_rgb(path, max_pixels=max_pixels)
    stated = _stated_mpp(path)
    array = np.asarray(rgb)

    def read(x: int, y: int, w: int, h: int, out: int) -> np.ndarray:
        return _fit(Image.fromarray(array[y:y + h, x:x + w]), out)

    def thumbnail(size: int) -> np.ndarray:
        im = rgb.copy()
        im.thumbnail((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im)

    return Source(path, rgb.width, rgb.height, mpp or stated, read, thumbnail)


def _stated_mpp(path: Path) -> float | None:
    """Microns per pixel from TIFF resolution tags (cm or inch units), else None (unknown)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            unit = tags.get("ResolutionUnit")
            res = tags.get("XResolution")
            if unit is None or res is None:
                return None
            num, den = res.value
            per_unit = num / den if den else 0.0
            microns = {2: 25_400.0, 3: 10_000.0}.get(int(unit.value))  # inch, centimetre
            if not microns or per_unit <= 1.0:   # 72 dpi style defaults say nothing about microscopy
                return None
            value = microns / per_unit
            return value if 0.05 <= value <= 50 else None
    except Exception:  # unreadable tags just mean "scale unknown"
        return None


def _flatten_rgba(region: Image.Image) -> Image.Image:
    # openslide returns RGBA with transparent pixels outside the scanned area: make them glass-white
    background = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, region.convert("RGBA")).convert("RGB")


def _fit(im: Image.Image, out: int) -> np.ndarray:
    if im.size != (out, out):
        im = im.resize((out, out), Image.Resampling.LANCZOS)
    return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- tiling

def tile_grid(source: Source, image_size: int, target_mpp: float, stride: int | None = None,
              min_tissue: float = 0.5, max_ink: float = 0.02, assume_mpp: float | None = None):
    """Yield (x, y, w, h, patch) for every patch that is mostly tissue, in level-0 coordinates.

    The source box of one patch is image_size * target_mpp / source_mpp level-0 pixels; when the
    file states no scale `assume_mpp` is used (callers say so to the user), else target_mpp."""
    source_mpp = source.mpp or assume_mpp or target_mpp
    box = max(1, round(image_size * target_mpp / source_mpp))
    step = max(1, round((stride or image_size) * target_mpp / source_mpp))
    candidates = _candidate_mask(source, box, step, min_tissue)
    for (x, y), keep in candidates:
        if not keep:
            continue
        patch = source.read(x, y, box, box, image_size)
        if tissue_fraction(patch) >= min_tissue and ink_fraction(patch) <= max_ink:
            yield x, y, box, box, patch


def _candidate_mask(source: Source, box: int, step: int, min_tissue: float):
    """Cheap pre-filter on a thumbnail so glass areas of a large slide are never read at full res."""
    thumb_size = 2048
    thumb = source.thumbnail(thumb_size)
    sy, sx = thumb.shape[0] / source.height, thumb.shape[1] / source.width
    mask = tissue_mask(thumb)
    for y in range(0, source.height - box + 1, step):
        for x in range(0, source.width - box + 1, step):
            y0, y1 = int(y * sy), max(int(y * sy) + 1, int((y + box) * sy))
            x0, x1 = int(x * sx), max(int(x * sx) + 1, int((x + box) * sx))
            # half the final threshold: the thumbnail blurs edges, the full-res check decides
            yield (x, y), bool(mask[y0:y1, x0:x1].mean() >= min_tissue * 0.5)


def tile_to_folder(path: str | Path, out_dir: str | Path, image_size: int, target_mpp: float,
                   stride: int | None = None, min_tissue: float = 0.5, max_tiles: int | None = None,
                   mpp: float | None = None, prefix: str | None = None, stop=None,
                   max_pixels: int | None = None) -> dict:
    """Tile one image or slide into PNGs under out_dir (provenance in each PNG's text chunk).

    Returns {"paths": [...], "source_mpp": float|None, "assumed_mpp": bool, "tiles": int}.
    Existing tiles of the same name are kept, so a killed run resumes where it stopped."""
    from core.io import save_png
    source = open_source(path, mpp, max_pixels)
    out_dir = Path(out_dir)
    prefix = prefix or Path(path).stem
    paths = []
    for x, y, w, h, patch in tile_grid(source, image_size, target_mpp, stride, min_tissue):
        if stop is not None and stop.is_set():
            break
        out = out_dir / f"{prefix}_x{x}_y{y}.png"
        if not out.exists():
            save_png(Image.fromarray(patch), out, {
                "source": str(Path(path).resolve()), "box": [x, y, w, h], "mpp": target_mpp,
                "source_mpp": source.mpp, "image_size": image_size})
        paths.append(str(out))
        if max_tiles and len(paths) >= max_tiles:
            break
    return {"paths": paths, "source_mpp": source.mpp, "assumed_mpp": source.mpp is None,
            "tiles": len(paths)}
