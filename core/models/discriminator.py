"""The patch discriminator for the autoencoder's optional adversarial loss."""
from __future__ import annotations

import math

import torch


class PatchDiscriminator(torch.nn.Sequential):
    """PatchGAN (pix2pix NLayerDiscriminator, 3 layers) — diffusers has no discriminator."""

    def __init__(self, channels: int = 64, layers: int = 3):
        mods: list[torch.nn.Module] = [torch.nn.Conv2d(3, channels, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_out = channels * min(2 ** i, 8)
            mods += [torch.nn.Conv2d(c, c_out, 4, 2 if i < layers else 1, 1, bias=False),
                     torch.nn.GroupNorm(math.gcd(32, c_out), c_out), torch.nn.LeakyReLU(0.2)]
            c = c_out
        mods.append(torch.nn.Conv2d(c, 1, 4, 1, 1))
        super().__init__(*mods)
