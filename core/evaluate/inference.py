"""The patch classifiers at inference: images decoded once into memory, and `predict`.

Apart from core.train.image_classifier's training so that scoring synthetic images (core.evaluate.selection) and the
feature spaces need no trainer; classify's training and evaluation use the same two.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from core.config.lab_config import ImageClassifierConfig
from core.errors import BadImage
from core.data.images import load_rgb, to_uint8
from core.precision import autocast


def load_images(paths, image_size: int, memo: bool = True) -> tuple[torch.Tensor, np.ndarray, dict[str, str]]:
    """Decode once into uint8 (N, 3, S, S); returns (images, index of kept rows, {path: reason}).

    Kept as uint8 so the same decoded set serves every arm and seed of the grid cheaply. The
    memo is keyed by the file's size and mtime too: a file rewritten under the same name (a
    regenerated synthetic image) is decoded again, never served stale. `memo=False` for sets
    read once (feature embedding behind its own content-hash cache).

    Args:
        paths (iterable of `str` or `Path`): the image files.
        image_size (`int`): S, the side images are resized to.
        memo (`bool`, *optional*, defaults to `True`): read from and add to the in-process memo.

    Returns:
        `tuple[torch.Tensor, np.ndarray, dict[str, str]]`: as above; unreadable files are skipped, not raised.
    """
    images, keep, skipped = [], [], {}
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
            key = (str(p), image_size, st.st_size, st.st_mtime_ns)
        except OSError:
            key = (str(p), image_size, -1, -1)   # missing: load_rgb below names the reason
        x = _CACHE.get(key) if memo else None
        if x is None:
            try:
                x = to_uint8(load_rgb(p), image_size)
            except (BadImage, OSError) as e:
                skipped[str(p)] = str(e)
                continue
            if memo and len(_CACHE) < _CACHE_LIMIT:
                _CACHE[key] = x
        images.append(x)
        keep.append(i)
    if not images:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), np.array([], int), skipped
    return torch.stack(images), np.asarray(keep), skipped


_CACHE: dict[tuple[str, int, int, int], torch.Tensor] = {}
_CACHE_LIMIT = 50_000


def _to_input(batch_u8: torch.Tensor, dev: torch.device) -> torch.Tensor:
    x = batch_u8.to(dev, non_blocking=True).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def _autocast(cfg: ImageClassifierConfig, dev: torch.device):
    # inference runs outside any Accelerator (scoring, test metrics): plain torch.autocast
    return autocast(dev, cfg.mixed_precision)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, cfg: ImageClassifierConfig | None = None,
            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities, pooled penultimate features) for uint8 or [-1, 1] float images.

    Args:
        model (`torch.nn.Module`): a timm classifier (put in eval mode).
        images (`torch.Tensor`): (N, 3, S, S), uint8 or float in [-1, 1].
        cfg (`ImageClassifierConfig`, *optional*, defaults to `None`): its precision sets the autocast; None: the
            section's defaults.
        batch_size (`int`, *optional*, defaults to 256): images per forward pass.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: float32 (N, C) and (N, D), on the CPU; (0, 0) each for no image.
    """
    dev = next(model.parameters()).device
    model.eval()
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        x = _to_input(chunk, dev) if chunk.dtype == torch.uint8 else \
            chunk.to(dev).contiguous(memory_format=torch.channels_last)
        with _autocast(cfg or ImageClassifierConfig(), dev):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.get_classifier()(f)
        probs.append(logits.float().softmax(-1).cpu())
        feats.append(f.float().cpu())
    if not probs:
        return torch.empty(0, 0), torch.empty(0, 0)
    return torch.cat(probs), torch.cat(feats)
