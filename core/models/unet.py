"""The unconditional latent UNet (diffusers UNet2DModel) and its noise schedule, from config."""
from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler, UNet2DModel

from core.config.lab_config import PretrainConfig


def build_unet(cfg: PretrainConfig, latent_size: int, latent_channels: int) -> UNet2DModel:
    """UNet2DModel with attention at `cfg.attention_resolutions` (latent resolutions).

    Args:
        cfg (`PretrainConfig`): widths, layers, attention, resnet_time_scale_shift, resblock_updown (resnet
            rather than conv up/down sampling).
        latent_size (`int`): the latent side (the model's sample_size).
        latent_channels (`int`): channels in and out.

    Returns:
        `UNet2DModel`: new and untrained.
    """
    n = len(cfg.block_out_channels)
    res = [latent_size // 2 ** i for i in range(n)]
    attn = [r in cfg.attention_resolutions for r in res]
    plain_down = "ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D"
    down = tuple("AttnDownBlock2D" if a else plain_down for a in attn)
    up = tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn))
    updown = "resnet" if cfg.resblock_updown else "conv"
    return UNet2DModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=math.gcd(32, *cfg.block_out_channels),
        resnet_time_scale_shift=cfg.resnet_time_scale_shift,
        downsample_type=updown, upsample_type=updown)


def build_scheduler(cfg: PretrainConfig) -> DDPMScheduler:
    """The training noise schedule: a diffusers `DDPMScheduler` from the pretrain section (no clipping).

    Args:
        cfg (`PretrainConfig`): num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type.

    Returns:
        `DDPMScheduler`
    """
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)


def prefers_channels_last(device: torch.device, mixed_precision: str) -> bool:
    """Memory format by measurement (benchmarks/pretrain_step.py --variants, guided_sampling.py): on 2
    CPU cores at demo shapes NCHW was faster for bf16 (group norm on channels_last is slow there) and
    equal for fp32; on CUDA channels_last is the tensor-core layout (for reduced precision).

    Args:
        device (`torch.device`): where the model runs.
        mixed_precision (`str`): "no", "bf16" or "fp16".

    Returns:
        `bool`: True on CUDA with reduced precision, else False.
    """
    return device.type == "cuda" and mixed_precision != "no"
