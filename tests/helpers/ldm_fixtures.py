"""Test workspaces with models: two unlabeled pools for the autoencoder / latent cache /
pre-training tests; labeled tiles with random-weight models saved in place for the sampling side
and the app."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import torch

from core.data.images import ImageDataset
from core.models import build_autoencoder, build_classifier, build_scheduler, build_unet
from core.train.autoencoder import latent_std
from core.workspace import Workspace
from labdata import make_splits


def tissue_like(rng: np.random.Generator, size: int) -> Image.Image:
    """Pink background with purple blobs: structured enough that an autoencoder can learn it."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform([200, 140, 170], [240, 180, 210])
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 10, size / 4)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[mask] = rng.uniform([80, 40, 120], [140, 90, 180])
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_pool_workspace(root: Path, n_per_pool=(12, 6), size: int = 32, weights=(0.5, 0.5),
                        seed: int = 0) -> Workspace:
    ws = Workspace(root).ensure()
    rng = np.random.default_rng(seed)
    rows = []
    for p, (n, w) in enumerate(zip(n_per_pool, weights)):
        folder = ws.unlabeled_dir / f"pool{p}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = folder / f"tile{i:03d}.png"
            tissue_like(rng, size).save(path)
            rows.append({"path": str(path), "pool": f"pool{p}", "weight": w})
    pd.DataFrame(rows).to_csv(ws.data_dir / "pools.csv", index=False)
    return ws


def tiny(cfg, **pretrain):
    """The tiny preset with pre-training fields overridden (deterministic fp32 by default)."""
    return replace(cfg, pretrain=replace(cfg.pretrain, **{"mixed_precision": "no", **pretrain}))


# a line of the CLI progress reporter in a log (core.cli.ProgressReporter), e.g.
# "pretrain:  40% 16/40 [00:01<00:02, 8.00it/s, loss=0.1]"
PROGRESS_LINE = re.compile(r"^\w+: +\d+% \d+/\d+ \[")


def message_lines(stderr: str) -> list[str]:
    """What a CLI wrote to stderr besides its progress lines (warnings, the error)."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


def make_model_workspace(root, cfg, classes=("tumor", "stroma"), unet=True, per_split=None):
    """Labeled colour-coded tiles + a (random-weight) autoencoder, scheduler and UNet saved in place."""
    ws = Workspace(root).ensure()
    frame = make_splits(ws, classes=classes, per_split=per_split, size=cfg.data.image_size)
    torch.manual_seed(0)
    vae = build_autoencoder(cfg.autoencoder)
    images = torch.stack([ImageDataset(frame["path"][:16], None, cfg.data.image_size)[i] for i in range(16)])
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, images))   # scale-by-std, as training does
    vae.save_pretrained(ws.autoencoder_dir)
    build_scheduler(cfg.pretrain).save_pretrained(ws.scheduler_dir)
    if unet:
        build_unet(cfg.pretrain, cfg.latent_size, cfg.autoencoder.latent_channels).save_pretrained(ws.unet_dir)
    return ws


def lay_untrained_models(ws, cfg, classes):
    """Untrained models at `cfg`'s shapes (autoencoder, UNet, scheduler, latent classifier), saved
    where the stages would save them (the app's tests; benchmarks/app_latency.py at the demo's shapes)."""
    torch.manual_seed(0)
    build_autoencoder(cfg.autoencoder).save_pretrained(ws.autoencoder_dir)
    build_unet(cfg.pretrain, cfg.latent_size, cfg.autoencoder.latent_channels).save_pretrained(ws.unet_dir)
    build_scheduler(cfg.pretrain).save_pretrained(ws.scheduler_dir)
    build_classifier(cfg, classes, cfg.autoencoder.latent_channels,
                     cfg.pretrain.num_train_timesteps).save_pretrained(ws.latent_classifier_dir)
