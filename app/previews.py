"""Pictures the sampling tab shows: the denoising preview and the labelled class x scale grid."""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw


def preview_image(payload: Any) -> Image.Image | None:
    """Turn what the sampler's callback hands over into a preview strip.

    core.sampling hands decoded x0 predictions (PIL images) every few steps; a bare latent
    tensor is shown by mapping its first three channels to RGB (A1111's cheap "approximate"
    preview), because a VAE decode every step would cost as much as the step itself.
    """
    if isinstance(payload, Image.Image):
        payload = [payload]
    if isinstance(payload, (list, tuple)) and payload and isinstance(payload[0], Image.Image):
        return _tile([_enlarge(im) for im in payload])
    import torch
    if isinstance(payload, torch.Tensor) and payload.ndim in (3, 4):
        z = payload.detach().float().cpu()
        z = z if z.ndim == 4 else z[None]
        rgb = z[:, :3] if z.shape[1] >= 3 else z[:, :1].repeat(1, 3, 1, 1)
        lo, hi = rgb.amin(dim=(1, 2, 3), keepdim=True), rgb.amax(dim=(1, 2, 3), keepdim=True)
        rgb = ((rgb - lo) / (hi - lo + 1e-6) * 255).byte().permute(0, 2, 3, 1).numpy()
        return _tile([Image.fromarray(a).resize((96, 96), Image.NEAREST) for a in rgb])
    return None


def _enlarge(image: Image.Image, size: int = 128) -> Image.Image:
    """Small (32-64 px) patches are upscaled with visible pixels so the preview is legible."""
    return image if image.width >= size else image.resize((size, size), Image.NEAREST)


def _tile(images: list[Image.Image]) -> Image.Image:
    w, h = images[0].size
    sheet = Image.new("RGB", (w * len(images), h), "white")
    for i, im in enumerate(images):
        sheet.paste(im.convert("RGB"), (i * w, 0))
    return sheet


LABEL_W, LABEL_H = 90, 18


def grid_canvas(classes: list[str], scales: list[float], cell: tuple[int, int]) -> Image.Image:
    w, h = cell
    canvas = Image.new("RGB", (LABEL_W + w * len(scales), LABEL_H + h * len(classes)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, s in enumerate(scales):
        draw.text((LABEL_W + j * w + 4, 3), f"g={s:g}", fill="black")
    for i, name in enumerate(classes):
        draw.text((4, LABEL_H + i * h + h // 2 - 5), name[:14], fill="black")
    return canvas
