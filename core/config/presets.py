"""The three presets: `tiny` (seconds, the tests), `demo` (CPU, minutes), `paper` (the reference
shapes, GPUs), and `config_for`, the one way the CLI and the app pick the config they run with."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from core.config.checks import apply_overrides
from core.config.lab_config import (PRESETS, AutoencoderConfig, DataConfig, DownstreamConfig, ExperimentConfig,
                                    FilterClassifierConfig, LabConfig, LatentClassifierConfig, PretrainConfig,
                                    SamplingConfig, SelectionConfig)
from core.config.store import load_config
from core.errors import ConfigError
from core.workspace import Workspace


def preset(name: str) -> LabConfig:
    """The named preset: `tiny` (seconds, tests), `demo` (CPU, minutes), `paper` (reference shapes, GPU).

    Args:
        name (`str`): "tiny", "demo" or "paper".

    Returns:
        `LabConfig`: the preset's config, validated.

    Raises:
        ConfigError: an unknown preset name.
    """
    if name == "demo":
        # Guidance runs the classifier forward + backward every step; at the UNet's widths
        # (64, 128, 128) with attention pooling it cost as much as the UNet. Half the
        # widths and global mean pooling (guided-diffusion's "adaptive" pool) cost ~0.1-0.2 of it.
        # Sized for about an hour on 2 CPU cores in total (see `make demo-models`).
        return LabConfig(
            preset="demo",
            # Pools with glass at two scales, flips/rotations. Stain jitter: the target's glass is 15%
            # darker than the pools'; unseen, the autoencoder gave it a frame and a blue cast
            # (background 21 dB; 80 steps of fine-tuning with jitter: 28 dB, no frame). With the
            # jitter, overlap-tile padding only cost: 22.7 dB with (2, 2), 25.5 dB plain on 363 test
            # tiles, the same frame profile as the real tiles (benchmarks/frame_artefact): left off.
            # Cosine lr; 2000 steps (the loss still fell 1% per 150 steps at 1500). Compiled: 74 vs
            # 36 images/s in the trainer over 150 steps, compiling included, the same losses to 1e-3.
            # Tried, not shipped (README): 2 layers per block, 3000 steps, UNet 3000: 27.1 dB, but no
            # stratum corneum sample passed the filter at budgets 1 and 0.1 (the every-class guard).
            autoencoder=AutoencoderConfig(steps=2000, mixed_precision="bf16", stain_jitter=0.2,
                                          lr_schedule="cosine", compile=True),
            # fp16 storage: the UNet is 18 of the bundle's 65 MB, and the bundle's budget is 60
            pretrain=PretrainConfig(steps=2500, stain_jitter=0.2, save_dtype="fp16"),
            # finetune_unet tried on the 27 dB models (README): background and dermis accepted far
            # more often, no stratum corneum still, no accuracy gain, an 84 MB bundle; left off
            latent_classifier=LatentClassifierConfig(block_out_channels=(32, 64, 64), pooling="mean"),
            # the demo's guidance sweep: mean p(target) peaks near s = 3 and falls by s = 10.
            # latent_margin=2 (20 x 20 latents, the centre 64 px kept): the inset square flat samples
            # show comes from the UNet's edges, not the data; with it the frame is gone and every
            # class but stratum corneum is accepted more often (v5, all labels: background 36 vs 11)
            sampling=SamplingConfig(num_per_class=200, guidance_scale=3.0, batch_size=128, latent_margin=2),
            # The filter classifier ships in the demo bundle (<= 40 MB in all): a 1.5M-parameter
            # MobileNetV3 keeps it at 6 MB where resnet18 would take 45 MB.
            # 100 steps: 13 epochs at all labels, 100 passes over a 10% budget (v1: 150; the v2
            # grid runs 45 classifiers, and the filter's best step was 105 of 150)
            # fp32: on CPU the MobileNet's bf16 step takes 1.4-1.5x the fp32 step's CPU time (AMD EPYC,
            # avx512_bf16, batch 64 at 64 px, 1 thread: 0.33-0.37 vs 0.22-0.25 s)
            filter_classifier=FilterClassifierConfig(backbone="mobilenetv3_small_100", steps=100, evals=5,
                                                     mixed_precision="no"),
            # 150 steps: the baseline's test accuracy at a quarter of the labels (seeds 0-2) is
            # 0.869 at 100 steps, 0.911 at 150 and 0.922 at 300 (0.910 / 0.919 at all labels);
            # every arm trains on the baseline's real batches (the section's defaults)
            downstream=DownstreamConfig(backbone="mobilenetv3_small_100", steps=150, evals=5, mixed_precision="no"),
            # per-class thresholds from each budget's real validation images: one
            # global 0.9 kept 0 of 200 background and dermis samples; the Selection tab says so
            selection=SelectionConfig(calibration="validation"),
            # all labels first (the budget the lab shows), then the few-label regime the method
            # is for. One ratio and three arms beside the baseline: selected synthetic images, as
            # many unselected ones, as many pseudo-labelled real ones (the competitor a user with
            # unlabeled tissue has); five seeds where runs are noisiest, three at all labels.
            # One top-up round: a class the filter rejects wholesale at 200 images is not rescued
            # by 400 more on CPU time (the shortfall is reported per class instead)
            experiment=ExperimentConfig(label_fractions=(1.0, 0.25, 0.1), synthetic_ratios=(1.0,),
                                        seeds=(0, 1, 2, 3, 4), budget_seeds=("f1=3",),
                                        arms=("selected", "unselected", "pseudo"), topup_rounds=1),
        ).validate()
    if name == "tiny":
        return LabConfig(
            preset="tiny",
            data=DataConfig(image_size=32, mpp=2.0),
            autoencoder=AutoencoderConfig(block_out_channels=(8, 16, 16), latent_channels=4,
                                          steps=20, batch_size=8),
            pretrain=PretrainConfig(block_out_channels=(8, 16), attention_resolutions=(4,),
                                    attention_head_dim=8, steps=20, batch_size=8, warmup_steps=2,
                                    checkpoint_every=10, sample_every=10, log_every=5),
            latent_classifier=LatentClassifierConfig(block_out_channels=(8, 16), steps=20, batch_size=8),
            sampling=SamplingConfig(steps=4, batch_size=8, num_per_class=16),
            # the tests' images are few and noisy: a range of 12 images passes about half of its own
            # class, so the realism checks are the tests' business to turn on
            selection=SelectionConfig(threshold=0.3, realism=()),
            filter_classifier=FilterClassifierConfig(backbone="test_resnet", image_size=32, steps=24, evals=2,
                                                     batch_size=16),
            downstream=DownstreamConfig(backbone="test_resnet", image_size=32, steps=24, evals=2, batch_size=16),
            experiment=ExperimentConfig(seeds=(0, 1, 2)),
        ).validate()
    if name == "paper":
        return LabConfig(
            preset="paper",
            data=DataConfig(image_size=256, mpp=0.5, num_workers=8),
            autoencoder=AutoencoderConfig(block_out_channels=(128, 256, 512), layers_per_block=2,
                                          latent_channels=3, steps=100_000, batch_size=16, lr=4.5e-6,
                                          disc_weight=0.5, mixed_precision="bf16"),
            pretrain=PretrainConfig(block_out_channels=(192, 384, 384, 768, 768), layers_per_block=2,
                                    attention_resolutions=(32, 16, 8), attention_head_dim=24,
                                    resnet_time_scale_shift="scale_shift", resblock_updown=True,
                                    # the reference's (LDM's) "linear" betas are linear in sqrt(beta):
                                    # diffusers' scaled_linear; its "linear" gives alpha-bar(500) .08 not .15
                                    beta_schedule="scaled_linear", steps=400_000, batch_size=4, lr=5e-5, warmup_steps=10_000,
                                    ema_decay=0.9999, checkpoint_every=5000, sample_every=5000,
                                    log_every=50),
            latent_classifier=LatentClassifierConfig(block_out_channels=(128, 128, 256, 256, 512, 512),
                                                     layers_per_block=2, steps=30_000, batch_size=32,
                                                     lr=5e-5, weight_decay=0.05),
            sampling=SamplingConfig(steps=50, eta=1.0, guidance_scale=10.0, batch_size=10,
                                    # compile: for GPUs (diffusers' docs); on 2 CPU cores at these
                                    # shapes it gained nothing. bf16 classifier: as
                                    # guided-diffusion's fp16 one.
                                    num_per_class=500, compile=True, classifier_precision="bf16"),
            # the reference: 300 epochs at batch 128 over ~5k labeled images, about 12k steps
            filter_classifier=FilterClassifierConfig(backbone="vit_small_patch16_224", image_size=224,
                                                     steps=12_000, evals=30, batch_size=128, lr=5e-4),
            downstream=DownstreamConfig(backbone="vit_small_patch16_224", image_size=224, steps=12_000,
                                        evals=30, batch_size=128, lr=5e-4),
            experiment=ExperimentConfig(label_fractions=(0.05,), synthetic_ratios=(0.5, 1.0, 3.0)),
        ).validate()
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def config_for(workspace: Workspace | str | Path | None, preset_name: str | None = None,
               overrides: Iterable[str] | Mapping[str, Any] = ()) -> LabConfig:
    """The config a CLI command or the app runs with: the named preset when one is given, else
    the workspace's saved config, else the demo preset; then the overrides (`apply_overrides`).

    Args:
        workspace (`Workspace`, `str` or `Path`): the workspace whose config.json is read when no preset is
            named; None for none.
        preset_name (`str`, *optional*, defaults to `None`): a preset that takes the place of the saved config.
        overrides (`Iterable[str]` or `Mapping[str, Any]`, *optional*, defaults to `()`): `--set` strings or a
            mapping of "section.field" to value.

    Returns:
        `LabConfig`: the config, validated.

    Raises:
        ConfigError: an unknown preset, a saved config that does not load, or a refused override.
    """
    saved = None
    if workspace is not None:
        saved = (workspace if isinstance(workspace, Workspace) else Workspace(workspace)).config_file
    if preset_name:
        cfg = preset(preset_name)
    elif saved is not None and saved.exists():
        cfg = load_config(saved)
    else:
        cfg = preset("demo")
    return apply_overrides(cfg, overrides)
