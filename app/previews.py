"""Pictures the sampling tab shows: the denoising preview and the labelled class x scale grid."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageOps

if TYPE_CHECKING:
    import torch


def preview_image(payload: Any) -> Image.Image | None:
    """Turn what the sampler's callback hands over into a preview strip.

    core.generate.sampling hands decoded x0 predictions (PIL images) every few steps; a bare latent
    tensor is shown by mapping its first three channels to RGB (A1111's cheap "approximate"
    preview), because a VAE decode every step would cost as much as the step itself.
    """
    # torch/torchvision are imported on first use: the lab starts ~1.5 s sooner without them
    import torch
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    if isinstance(payload, Image.Image):
        payload = [payload]
    if isinstance(payload, (list, tuple)) and payload and isinstance(payload[0], Image.Image):
        return _strip(torch.stack([pil_to_tensor(_enlarge(im).convert("RGB")) for im in payload]))
    if isinstance(payload, torch.Tensor) and payload.ndim in (3, 4):
        z = payload.detach().float().cpu()
        z = z if z.ndim == 4 else z[None]
        rgb = z[:, :3] if z.shape[1] >= 3 else z[:, :1].repeat(1, 3, 1, 1)
        lo, hi = rgb.amin(dim=(1, 2, 3), keepdim=True), rgb.amax(dim=(1, 2, 3), keepdim=True)
        rgb = ((rgb - lo) / (hi - lo + 1e-6) * 255).byte()
        # PIL's NEAREST, not torch's: they break half-pixel ties differently (64 -> 96 px moves
        # a third of the pixels), and this keeps the preview as it was
        return _strip(torch.stack([pil_to_tensor(to_pil_image(a).resize((96, 96), Image.NEAREST)) for a in rgb]))
    return None


def _enlarge(image: Image.Image, size: int = 128) -> Image.Image:
    """Small (32-64 px) patches are upscaled with visible pixels so the preview is legible."""
    return image if image.width >= size else image.resize((size, size), Image.NEAREST)


def _strip(images: torch.Tensor) -> Image.Image:
    """uint8 images (N, 3, H, W) side by side, no padding."""
    from torchvision.transforms.v2.functional import to_pil_image
    from torchvision.utils import make_grid
    return to_pil_image(make_grid(images, nrow=len(images), padding=0))


LABEL_W, LABEL_H = 90, 18


def class_scale_grid(classes: list[str], scales: list[float],
                     cells: dict[tuple[int, int], Image.Image]) -> Image.Image:
    """The class x guidance-scale grid so far: cell (i, j) is class i at scale j, cells not made
    yet are white; the scales are written above and the class names to the left (make_grid
    draws no labels, so the margin is added with ImageOps.expand and written with ImageDraw)."""
    import torch
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import make_grid
    w, h = next(iter(cells.values())).size
    blank = torch.full((3, h, w), 255, dtype=torch.uint8)
    tiles = [pil_to_tensor(cells[i, j].convert("RGB")) if (i, j) in cells else blank
             for i in range(len(classes)) for j in range(len(scales))]
    body = to_pil_image(make_grid(tiles, nrow=len(scales), padding=0))
    canvas = ImageOps.expand(body, border=(LABEL_W, LABEL_H, 0, 0), fill="white")
    draw = ImageDraw.Draw(canvas)
    for j, s in enumerate(scales):
        draw.text((LABEL_W + j * w + 4, 3), f"g={s:g}", fill="black")
    for i, name in enumerate(classes):
        draw.text((4, LABEL_H + i * h + h // 2 - 5), name[:14], fill="black")
    return canvas
