"""Robust image loading: every file users really have becomes RGB, or a clear reason to skip it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTS = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


class BadImage(ValueError):
    """The file cannot be used as an image; str(e) is the reason shown to the user."""


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def load_rgb(path: str | Path, min_size: int = 8) -> Image.Image:
    """Open any supported image as 8-bit RGB (EXIF orientation applied) or raise BadImage."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated / non-images
        raise BadImage(f"unreadable image ({type(e).__name__}: {e})") from None
    if min(rgb.size) < min_size:
        raise BadImage(f"too small ({rgb.size[0]}x{rgb.size[1]} < {min_size} px)")
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: stretch to 8 bit over the file's own range.
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))  # slides are white behind
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """PIL RGB -> float tensor (3, S, S) in [-1, 1], resized with antialiasing."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    a = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return a.float().div_(127.5).sub_(1.0)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Tensor (N, 3, H, W) in [-1, 1] -> list of PIL RGB images."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in a]


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
