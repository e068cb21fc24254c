"""The KL autoencoder (diffusers AutoencoderKL) from config, and the scaled encode/decode every
stage uses, so all latents are unit-variance (`scaling_factor` lives in the saved config)."""
from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL

from core.config import AutoencoderConfig


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=math.gcd(32, *cfg.block_out_channels))


def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (posterior mean x scaling_factor)."""
    param = next(vae.parameters())
    z = vae.encode(x.to(param.device, param.dtype)).latent_dist.mode()
    z = z - _shift(vae) if _shift(vae) else z
    return z * vae.config.scaling_factor


def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> pixels in [-1, 1] (clamped)."""
    param = next(vae.parameters())
    z = z.to(param.device, param.dtype) / vae.config.scaling_factor
    x = vae.decode(z + _shift(vae) if _shift(vae) else z).sample
    return x.clamp(-1, 1)


def _shift(vae: AutoencoderKL) -> float | None:
    # AutoencoderKL configs may carry a latent mean (SD3/Flux style); the lab's VAEs have none
    return getattr(vae.config, "shift_factor", None)
