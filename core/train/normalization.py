"""Where a classifier's normalisation statistics come from when a run adds images to its real
ones (`<section>.norm`). A BatchNorm network trained on real and synthetic images pooled in one
batch keeps running statistics of the mix, which at test time describe neither source.

- "pooled": BatchNorm over the whole batch, real and added images together.
- "split": the added part of each batch is normalised by its own batch statistics (a second
  forward, running statistics frozen), so the running statistics follow the real part only.
- "recompute": pooled in training; before every validation, and so at the step kept, the running
  statistics are recomputed on the run's real training images, un-augmented as test images come.
- "split_recompute": both.
- "group": GroupNorm instead of BatchNorm, no batch statistics at all (core.models.backbone).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from core.evaluate.inference import _to_input


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def running_stats_frozen(norms: list):
    """BatchNorm layers normalise by the batch's statistics but leave their running statistics
    as they are (momentum 0: running = 1 * running + 0 * batch)."""
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def forward_parts(forward, norms: list, x_real: torch.Tensor, x_added: torch.Tensor | None, split: bool) -> torch.Tensor:
    """Logits of the real images then the added ones: one forward of the pooled batch, or (split)
    the added part apart, with its own batch statistics and no say in the running statistics. A
    part of one image has no batch statistics (the reference's epochs protocol can draw one): that
    step is pooled."""
    if x_added is None or not len(x_added):
        return forward(x_real)
    if not split or min(len(x_real), len(x_added)) < 2:
        return forward(torch.cat([x_real, x_added]))
    real = forward(x_real)
    with running_stats_frozen(norms):
        added = forward(x_added)
    return torch.cat([real, added])


@torch.no_grad()
def recompute_running_stats(net: nn.Module, images_u8: torch.Tensor, batch: int) -> None:
    """Running statistics := the average of the batch statistics of `images_u8` (the real
    training images, in batches of `batch`), the rest of the network in eval mode."""
    norms = batch_norms(net)
    if not norms or not len(images_u8):
        return
    was, saved = net.training, [m.momentum for m in norms]
    device = next(net.parameters()).device
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None            # cumulative average over the batches below
        m.train()
    try:
        for i in range(0, len(images_u8), batch):
            chunk = images_u8[i:i + batch]
            if len(chunk) > 1 or i == 0:      # a lone last image adds noise, not statistics
                net(_to_input(chunk, device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        net.train(was)
