"""The noise-aware latent classifier p(y | z_t, t).

The encoder half of a UNet (guided-diffusion's EncoderUNetModel) assembled from diffusers
blocks, so it saves with `save_pretrained` (safetensors + config.json holding the class names).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import AttentionPooling, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from torch import nn

from core.config.lab_config import LabConfig


class LatentClassifier(ModelMixin, ConfigMixin):
    """forward(z_t, t) -> logits; time embedding in every ResNet block, attention or mean pooling."""

    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = 4, class_names: tuple[str, ...] = ("a", "b"),
                 block_out_channels: tuple[int, ...] = (64, 128, 128), layers_per_block: int = 1,
                 attention_resolutions: tuple[int, ...] = (), attention_head_dim: int = 8,
                 pooling: str = "attention", norm_num_groups: int | None = None,
                 num_train_timesteps: int = 1000):
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be attention|mean, got {pooling!r}")
        # GroupNorm needs groups dividing every width; tiny models have 8-channel blocks.
        groups = norm_num_groups or math.gcd(32, *block_out_channels)
        temb = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        resolution, out_ch = sample_size, block_out_channels[0]
        for i, width in enumerate(block_out_channels):
            in_ch, out_ch = out_ch, width
            kind = "AttnDownBlock2D" if resolution in attention_resolutions else "DownBlock2D"
            last = i == len(block_out_channels) - 1
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=in_ch, out_channels=out_ch,
                temb_channels=temb, add_downsample=not last, resnet_eps=1e-5, resnet_act_fn="silu",
                resnet_groups=groups, attention_head_dim=attention_head_dim, downsample_padding=1))
            resolution = resolution if last else resolution // 2
        width = block_out_channels[-1]
        self.mid_block = UNetMidBlock2D(in_channels=width, temb_channels=temb, resnet_groups=groups,
                                        attention_head_dim=attention_head_dim)
        self.norm_out = nn.GroupNorm(groups, width)
        self.pool = AttentionPooling(max(1, width // attention_head_dim), width) if pooling == "attention" else None
        self.head = nn.Linear(width, len(class_names))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = t.reshape(-1).to(sample.device).expand(sample.shape[0]) if t.numel() == 1 else t.to(sample.device)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        h = self.conv_in(sample)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
        h = F.silu(self.norm_out(self.mid_block(h, emb)))
        if self.pool is None:
            return self.head(h.mean(dim=(2, 3)))
        return self.head(self.pool(h.flatten(2).transpose(1, 2)))


def build_classifier(cfg: LabConfig, class_names: list[str], latent_channels: int, num_train_timesteps: int
                     ) -> LatentClassifier:
    """A new, untrained noise-aware `LatentClassifier` shaped by `cfg.latent_classifier`.

    Args:
        cfg (`LabConfig`): its latent_classifier section and latent_size.
        class_names (`list[str]`): the classes, in label order (stored in the model config).
        latent_channels (`int`): the autoencoder's latent channels.
        num_train_timesteps (`int`): the diffusion schedule's length (the classifier's timestep range).

    Returns:
        `LatentClassifier`
    """
    c = cfg.latent_classifier
    return LatentClassifier(sample_size=cfg.latent_size, in_channels=latent_channels,
                            class_names=tuple(class_names), block_out_channels=tuple(c.block_out_channels),
                            layers_per_block=c.layers_per_block,
                            attention_resolutions=tuple(c.attention_resolutions),
                            attention_head_dim=c.attention_head_dim, pooling=c.pooling,
                            num_train_timesteps=num_train_timesteps)
