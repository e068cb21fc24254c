"""The KL autoencoder (diffusers AutoencoderKL) from config, and the scaled encode/decode every
stage uses, so all latents are unit-variance (`scaling_factor` lives in the saved config)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from core.config.lab_config import AutoencoderConfig

# Private config key ("_" keys survive diffusers' save/load without an "unexpected" warning):
# [encode, decode] latent pixels of overlap-tile padding (AutoencoderConfig.encode_padding).
EDGE_PADDING = "_edge_padding"


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    """A new, untrained diffusers `AutoencoderKL` shaped by the config (one down/up block per width).

    Args:
        cfg (`AutoencoderConfig`): block_out_channels, layers_per_block, latent_channels; its
            encode_padding/decode_padding are stored in the model config when either is set.

    Returns:
        `AutoencoderKL`: RGB in and out, group norm groups gcd(32, widths).
    """
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=math.gcd(32, *cfg.block_out_channels))
    if cfg.encode_padding or cfg.decode_padding:
        vae.register_to_config(**{EDGE_PADDING: [cfg.encode_padding, cfg.decode_padding]})
    return vae


def edge_padding(vae: AutoencoderKL) -> tuple[int, int]:
    """(encode, decode) latent pixels of reflect padding this VAE runs with at inference.

    Args:
        vae (`AutoencoderKL`): the autoencoder.

    Returns:
        `tuple[int, int]`: (0, 0) when its config stores none.
    """
    pad = vae.config.get(EDGE_PADDING) or (0, 0)
    return int(pad[0]), int(pad[1])


def factor(vae: AutoencoderKL) -> int:
    """How many image pixels one latent pixel spans per side: 2 ** (number of blocks - 1).

    Args:
        vae (`AutoencoderKL`): the autoencoder.

    Returns:
        `int`
    """
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (posterior mean x scaling_factor). With encode padding
    p the image is reflect-padded by p latent px and the latent cropped back (overlap-tile).

    Args:
        vae (`AutoencoderKL`): the autoencoder.
        x (`torch.Tensor`): images (N, 3, H, W), moved to the VAE's device and dtype.

    Returns:
        `torch.Tensor`: latents (N, C, H / factor, W / factor), shifted where the VAE stores a shift.
    """
    param = next(vae.parameters())
    p = edge_padding(vae)[0]
    x = x.to(param.device, param.dtype)
    if p:
        x = F.pad(x, (p * factor(vae),) * 4, mode="reflect")
    z = vae.encode(x).latent_dist.mode()
    if p:
        z = z[..., p:-p, p:-p]
    shift, scale = latent_affine(vae, z)
    return (z - shift) * scale


def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> pixels in [-1, 1] (clamped). With decode padding p the latent is
    reflect-padded by p px and the image cropped back, so edge pixels see no zero padding.

    Args:
        vae (`AutoencoderKL`): the autoencoder (its scaling factor, shift and padding are applied).
        z (`torch.Tensor`): latents (N, C, h, w), moved to the VAE's device and dtype.

    Returns:
        `torch.Tensor`: images (N, 3, H, W) in [-1, 1].
    """
    param = next(vae.parameters())
    p = edge_padding(vae)[1]
    z = z.to(param.device, param.dtype)
    shift, scale = latent_affine(vae, z)
    z = z / scale + shift
    if p:
        z = F.pad(z, (p,) * 4, mode="reflect")
    x = vae.decode(z).sample
    if p:
        c = p * factor(vae)
        x = x[..., c:-c, c:-c]
    return x.clamp(-1, 1)


def latent_affine(vae: AutoencoderKL, like: torch.Tensor) -> tuple:
    """(shift, scale) with scaled latent = (posterior mean - shift) * scale: diffusers' conventions,
    per channel where the config carries `latents_mean` / `latents_std` (SDXL / Playground style),
    else the scalar `shift_factor` (SD3 / Flux) and `scaling_factor`.

    Args:
        vae (`AutoencoderKL`): the autoencoder whose config is read.
        like (`torch.Tensor`): latents (N, C, h, w) whose device and dtype the result takes.

    Returns:
        `tuple`: (shift, scale), each a float or a (1, C, 1, 1) tensor.
    """
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    as_channels = lambda v: torch.tensor(v, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)  # noqa: E731
    shift = as_channels(mean) if mean is not None else (getattr(cfg, "shift_factor", None) or 0.0)
    scale = cfg.scaling_factor / as_channels(std) if std is not None else cfg.scaling_factor
    return shift, scale
