"""Robust image loading: every file users really have becomes RGB, or a clear reason to skip it."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from core.config.lab_config import DataConfig
from core.errors import BadImage

MAX_IMAGE_PIXELS = DataConfig.max_image_pixels     # the config's default pixel cap
# every open here checks the cap first (_open_header), so Pillow's softer warning only repeats it
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
IMAGE_EXTS = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
SLIDE_EXTS = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"}  # openslide formats


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def load_rgb(path: str | Path, min_size: int = 8, max_pixels: int | None = None) -> Image.Image:
    """Open any supported image as 8-bit RGB (EXIF orientation applied) or raise BadImage. An
    image over `max_pixels` (default: data.max_image_pixels' default) is refused from its header,
    before a pixel is decoded."""
    path = Path(path)
    max_pixels = max_pixels or MAX_IMAGE_PIXELS
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with _open_header(path, max_pixels) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated / non-images
        rgb = _tiff_fallback(path, e, max_pixels)
    if min(rgb.size) < min_size:
        raise BadImage(f"too small ({rgb.size[0]}x{rgb.size[1]} < {min_size} px)")
    return rgb


def _open_header(path: Path, max_pixels: int) -> Image.Image:
    """Image.open (the header only) with the pixel cap checked before anything is decoded."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:    # over Pillow's own hard limit (2x its warning)
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise BadImage(_too_large(int(found.group(1)) if found else None, max_pixels)) from None
    if im.width * im.height > max_pixels:
        size = f"{im.width}x{im.height}"
        im.close()
        raise BadImage(_too_large(None, max_pixels, size))
    return im


def _too_large(pixels: int | None, max_pixels: int, size: str = "") -> str:
    what = size or (f"{pixels:,} pixels" if pixels else "over Pillow's limit")
    return (f"too large: {what} is over data.max_image_pixels = {max_pixels:,} (not decoded; a "
            "whole-slide image goes in as a slide or pyramidal TIFF, which is read by region)")


def _tiff_fallback(path: Path, error: Exception, max_pixels: int) -> Image.Image:
    """Pillow cannot decode some TIFFs microscopes write (16-bit RGB, float, multi-sample);
    tifffile can. Anything else that Pillow rejects is a BadImage with Pillow's reason."""
    reason = f"unreadable image ({type(error).__name__}: {error})"
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise BadImage(reason) from None
    try:
        import tifffile
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
            height, width = (shape[1], shape[2]) if len(shape) == 3 and shape[0] in (1, 3, 4) \
                and shape[-1] not in (1, 3, 4) else (shape[0], shape[1])
            if width * height > max_pixels:
                raise BadImage(_too_large(None, max_pixels, f"{width}x{height}"))
            a = np.asarray(tif.pages[0].asarray())
    except BadImage:
        raise
    except Exception:  # tifffile raises many types for damaged files; Pillow's reason is clearer
        raise BadImage(reason) from None
    return array_to_rgb(a, reason)


def array_to_rgb(a: np.ndarray, reason: str = "unsupported pixel layout") -> Image.Image:
    """(H, W), (H, W, 1|3|4) or (1|3|4, H, W) array of any numeric dtype -> 8-bit RGB."""
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)                  # planar (samples first) -> interleaved
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]                             # tifffile RGBA: slides have no real alpha
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3) or a.dtype.kind not in "uif":
        raise BadImage(f"{reason}; array {a.shape} {a.dtype}")
    a8 = _stretch_to_uint8(a)
    return Image.fromarray(a8).convert("RGB")


def _stretch_to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer data scaled by its dtype's range (keeps colour balance); floats by their own."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "ui" and a.max() > 255:
        info = np.iinfo(a.dtype)
        hi = float(info.max) if a.max() > 4095 else 4095.0   # 12-bit cameras store in 16-bit words
        return np.clip(a.astype(np.float64) / hi * 255.0, 0, 255).round().astype(np.uint8)
    if a.dtype.kind in "ui":
        return a.astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return a.round().astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: microscopes use 12..16 bit words, so scale by the range
        return array_to_rgb(np.asarray(im))
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))  # slides are white behind
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def scan_images(root: str | Path, min_size: int = 8, max_pixels: int | None = None) -> tuple[list[dict], list[dict]]:
    """Every image file under root (any depth, extension in any case): (good, skipped).
    good: {"path", "width", "height", "mode"}; skipped: {"path", "reason"}. Never raises on a
    file (one over `max_pixels` is skipped before it is decoded); hidden files and folders
    (".*") are ignored as they are not user data."""
    good, skipped = [], []
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if not is_image_path(path):
            reason = ("whole-slide image: tiled when given as an unlabeled pool, not a patch"
                      if path.suffix.lower() in SLIDE_EXTS else
                      f"not an image extension ({path.suffix or 'none'})")
            skipped.append({"path": str(path), "reason": reason})
            continue
        try:
            mode = _mode(path, max_pixels or MAX_IMAGE_PIXELS)
            rgb = load_rgb(path, min_size, max_pixels)
        except BadImage as e:
            skipped.append({"path": str(path), "reason": str(e)})
            continue
        good.append({"path": str(path), "width": rgb.width, "height": rgb.height, "mode": mode})
    return good, skipped


def _mode(path: Path, max_pixels: int) -> str:
    """The pixel mode Pillow reads from the header; tifffile's files have none Pillow knows."""
    try:
        with _open_header(path, max_pixels) as im:
            return im.mode
    except (OSError, SyntaxError, ValueError):
        return "tiff (tifffile)"


def to_uint8(image: Image.Image, image_size: int) -> torch.Tensor:
    """PIL RGB -> uint8 tensor (3, S, S), resized with antialiasing."""
    # imported here: torchvision adds ~1.5 s to start-up, and the app imports this module early
    from torchvision.transforms.v2.functional import pil_to_tensor
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return pil_to_tensor(image)


def to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """PIL RGB -> float tensor (3, S, S) in [-1, 1], resized with antialiasing."""
    return to_uint8(image, image_size).float().div_(127.5).sub_(1.0)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Tensor (N, 3, H, W) in [-1, 1] -> list of PIL RGB images."""
    from torchvision.transforms.v2.functional import to_pil_image
    # Rounded to uint8 here: to_pil_image on a float tensor truncates (x * 255).byte() and
    # expects [0, 1], which would move pixels of every saved synthetic image by up to 1/255.
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return [to_pil_image(img) for img in a]


class ImageDataset(Dataset):
    """Images from paths as tensors in [-1, 1]; yields (image, label) or image alone.

    Files are expected to be pre-checked (scan/check); a file that breaks later is replaced by
    the next good one and recorded in `self.failed`, so a long run never dies on one bad tile.
    """

    def __init__(self, paths, labels=None, image_size: int = 64):
        self.paths = [str(p) for p in paths]
        self.labels = None if labels is None else [int(v) for v in labels]
        self.image_size = image_size
        self.failed: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                x = to_tensor(load_rgb(self.paths[j]), self.image_size)
            except BadImage as e:
                self.failed[self.paths[j]] = str(e)
                continue
            return x if self.labels is None else (x, self.labels[j])
        raise BadImage("no readable image left in the dataset")


def stain_jitter(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Mild stain/scanner jitter on images in [-1, 1]: per image, one brightness gain in
    [1 - s, 1 + s/4] and one gain per channel in [1 - s/3, 1 + s/3] on transmitted light.
    Gains, not offsets: a dimmer lamp or another white balance scales light, so glass and stain
    move together (issue 15: the target's glass is 15% darker than the pools' and a model that
    never saw it painted it with a frame and a blue cast)."""
    if strength <= 0:
        return x
    n = x.shape[0]
    bright = 1 - strength + torch.rand(n, 1, 1, 1, generator=generator) * strength * 1.25
    channel = 1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * strength / 3
    light = (x + 1) / 2 * (bright * channel).to(x)
    return (light.clamp(0, 1) * 2 - 1).to(x.dtype)
