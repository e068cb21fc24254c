"""Noise-aware latent classifier p(y | z_t, t): the model, its training, and `python -m core classifier`.

The model is the encoder half of a UNet (guided-diffusion's EncoderUNetModel) assembled from
diffusers blocks, so it saves with `save_pretrained` (safetensors + config.json holding the
class names). It is trained on q_sample-noised latents of the labeled TRAIN split at uniformly
drawn t, because classifier guidance queries it on noisy latents; `noise_aware=False` trains on
clean latents at t = 0 only, the reference implementation's defect, kept for comparison.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import AttentionPooling, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from diffusers.optimization import get_scheduler
from torch import nn

from core import cli as cli_util
from core.cli import UserError
from core.config import LabConfig, config_hash, save_config
from core.io import atomic_dir, atomic_write_text
from core.budget import budget_labels, write_labels
from core.latents import augment, latent_cache
from core.training import (MetricsLog, adamw, make_accelerator, resume_step, step_generator,
                           train_loop)
from core.workspace import Workspace

STAGE = "classifier"


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
    c = cfg.classifier
    return LatentClassifier(sample_size=cfg.latent_size, in_channels=latent_channels,
                            class_names=tuple(class_names), block_out_channels=tuple(c.block_out_channels),
                            layers_per_block=c.layers_per_block,
                            attention_resolutions=tuple(c.attention_resolutions),
                            attention_head_dim=c.attention_head_dim, pooling=c.pooling,
                            num_train_timesteps=num_train_timesteps)


def load_latent_classifier(ws: Workspace) -> LatentClassifier:
    if not (ws.latent_classifier_dir / "config.json").exists():
        raise UserError(f"no latent classifier in {ws.latent_classifier_dir} "
                        "(train it: python -m core classifier --workspace DIR)")
    return LatentClassifier.from_pretrained(ws.latent_classifier_dir).eval()


def load_scheduler_checked(ws: Workspace) -> DDPMScheduler:
    if not (ws.scheduler_dir / "scheduler_config.json").exists():
        raise UserError(f"no diffusion scheduler in {ws.scheduler_dir} (run: python -m core pretrain --workspace DIR)")
    return DDPMScheduler.from_pretrained(ws.scheduler_dir)


def split_latents(ws: Workspace, cfg: LabConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(scaled latents N x C x h x w, labels, class names) of the label budget's train or val
    images, via the latent cache. Unreadable images are skipped by the cache (listed in its
    `skipped`); labels follow `kept`."""
    from core.autoencoder import load_autoencoder
    frame, classes = budget_labels(ws, cfg)
    rows = frame[frame["split"] == split]
    if rows.empty:
        return np.zeros((0,)), np.zeros((0,), dtype=np.int64), classes
    cache = latent_cache(ws, load_autoencoder(ws), list(rows["path"]), cfg.data.image_size)
    labels = rows["label"].to_numpy(np.int64)[cache.kept]
    return np.asarray(cache, dtype=np.float32), labels, classes


@torch.no_grad()
def accuracy_by_t(model: LatentClassifier, scheduler: DDPMScheduler, latents: torch.Tensor, labels: torch.Tensor,
                  buckets: int, batch_size: int, seed: int = 1234) -> pd.DataFrame:
    """Accuracy at each of `buckets` t-intervals; every sample is noised at one fixed t per bucket."""
    T = scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(seed)
    rows = []
    model.eval()
    device = next(model.parameters()).device
    for b in range(buckets):
        lo, hi = b * T // buckets, (b + 1) * T // buckets
        t = torch.randint(lo, hi, (len(latents),), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        correct, loss = 0, 0.0
        for i in range(0, len(latents), batch_size):
            z0, tt, y = latents[i:i + batch_size], t[i:i + batch_size], labels[i:i + batch_size]
            z = scheduler.add_noise(z0, noise[i:i + batch_size], tt)
            logits = model(z.to(device), tt.to(device)).float().cpu()
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n = max(len(latents), 1)
        rows.append({"bucket": b, "t_min": lo, "t_max": hi - 1, "accuracy": correct / n, "loss": loss / n,
                     "n": len(latents)})
    model.train()
    return pd.DataFrame(rows)


def train_latent_classifier(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> pd.DataFrame:
    """Train on the budget's train images, report per-t-bucket accuracy on its val images, save to
    ws.latent_classifier_dir with labels.csv (the exact labeled images it used).

    Resumes from checkpoints/classifier when the config matches. Returns the accuracy-by-t frame
    (`frame.attrs["stopped"]` is True when `stop` interrupted it; the checkpoint is then kept).
    """
    c = cfg.classifier
    scheduler = load_scheduler_checked(ws)
    train_z, train_y, classes = split_latents(ws, cfg, "train")
    if len(train_z) == 0:
        raise UserError(f"the label budget in {ws.labels_file} has no training image")
    val_z, val_y, _ = split_latents(ws, cfg, "val")
    eval_split = "val"
    if len(val_z) == 0:  # val_fraction = 0: report on train rather than touching the test split
        val_z, val_y, eval_split = train_z, train_y, "train"
    if c.finetune_unet:
        finetune_unet(ws, cfg, train_z, progress=progress, stop=stop)
        if stop is not None and stop.is_set():
            return _stopped_frame()

    ckpt_dir = ws.checkpoints_dir / STAGE
    _forget_other_runs(ckpt_dir, config_hash(cfg.classifier, cfg.data, len(train_z), classes))
    accelerator = make_accelerator(c.mixed_precision, 1, ws.root, c.seed)
    model = build_classifier(cfg, classes, train_z.shape[1], scheduler.config.num_train_timesteps)
    optimizer = adamw(model.parameters(), c.lr, c.weight_decay, accelerator.device)
    lr_sched = get_scheduler("cosine", optimizer, num_warmup_steps=min(100, c.steps // 10),
                             num_training_steps=c.steps)
    model, optimizer, lr_sched = accelerator.prepare(model, optimizer, lr_sched)
    start = resume_step(accelerator, ckpt_dir)
    log = MetricsLog(ws.metrics_file(STAGE), accelerator, STAGE, progress, c.steps)
    z_all, y_all = torch.from_numpy(np.array(train_z)), torch.from_numpy(np.array(train_y))
    T = scheduler.config.num_train_timesteps
    last = {}

    def step_fn(step: int) -> torch.Tensor:
        gen = step_generator(c.seed, step, 0, accelerator.process_index)
        idx = torch.randint(0, len(z_all), (c.batch_size,), generator=gen)
        z0, y = augment(z_all[idx], gen), y_all[idx].to(accelerator.device)
        if c.noise_aware:
            t = torch.randint(0, T, (len(idx),), generator=gen)
            z = scheduler.add_noise(z0, torch.randn(z0.shape, generator=gen), t)
        else:  # the reference's way: clean latents, t = 0
            t, z = torch.zeros(len(idx), dtype=torch.long), z0
        with accelerator.autocast():
            logits = model(z.to(accelerator.device), t.to(accelerator.device))
        loss = F.cross_entropy(logits.float(), y)
        accelerator.backward(loss)
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        last["acc"] = float((logits.argmax(1) == y).float().mean())
        return loss

    def after_step(step: int, loss: float) -> None:
        if step % c.log_every == 0 or step == c.steps:
            log.log({"step": step, "loss": loss, "train_acc": last["acc"], "lr": lr_sched.get_last_lr()[0],
                     "images_per_s": log.tick(step, step * c.batch_size)})
        log.report(step, loss=loss)

    result = train_loop(accelerator, start=start, steps=c.steps, step_fn=step_fn, ckpt_dir=ckpt_dir,
                        checkpoint_every=c.checkpoint_every, total_limit=1, stop=stop, after_step=after_step)
    net = accelerator.unwrap_model(model).float()
    table = accuracy_by_t(net, scheduler, torch.from_numpy(np.array(val_z)), torch.from_numpy(np.array(val_y)),
                          c.t_buckets, batch_size=max(c.batch_size, 64))
    table["split"], table["noise_aware"], table["step"] = eval_split, c.noise_aware, result["step"]
    log.log({"step": result["step"], "eval_split": eval_split,
             "accuracy_by_t": table["accuracy"].round(4).tolist()})
    if not result["stopped"] and accelerator.is_main_process:
        with atomic_dir(ws.latent_classifier_dir) as tmp:
            net.save_pretrained(tmp)
            atomic_write_text(tmp / "accuracy_by_t.csv", table.to_csv(index=False))
            write_labels(tmp, budget_labels(ws, cfg)[0])
            save_config(cfg, tmp, "lab_config.json")
    table.attrs["stopped"] = result["stopped"]
    return table


def _stopped_frame() -> pd.DataFrame:
    frame = pd.DataFrame(columns=["bucket", "t_min", "t_max", "accuracy", "loss", "n"])
    frame.attrs["stopped"] = True
    return frame


def _forget_other_runs(ckpt_dir: Path, key: str) -> None:
    """Checkpoints of a different config/data must not be resumed into this run."""
    marker = ckpt_dir / "run_key.json"
    if ckpt_dir.exists() and (not marker.exists() or json.loads(marker.read_text()).get("key") != key):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if not marker.exists():
        atomic_write_text(marker, json.dumps({"key": key}))


def finetune_unet(ws: Workspace, cfg: LabConfig, latents: np.ndarray, progress=None, stop=None) -> dict:
    """Continue the pre-trained unconditional UNet on the target set's latents (classifier.finetune_unet).

    A short loop here rather than core.pretrain's trainer, which draws from the unlabeled pools;
    the result goes to ws.finetuned_unet_dir and the sampler prefers it when the switch is on.
    """
    from diffusers import UNet2DModel
    c, p = cfg.classifier, cfg.pretrain
    if not (ws.unet_dir / "config.json").exists():
        raise UserError(f"no pre-trained UNet in {ws.unet_dir} to fine-tune (run: python -m core pretrain)")
    scheduler = load_scheduler_checked(ws)
    ckpt_dir = ws.checkpoints_dir / f"{STAGE}-finetune"
    _forget_other_runs(ckpt_dir, config_hash(c, p.loss, len(latents)))
    accelerator = make_accelerator(c.mixed_precision, 1, ws.root, c.seed)  # the classifier stage's precision
    unet = UNet2DModel.from_pretrained(ws.unet_dir)
    optimizer = adamw(unet.parameters(), c.finetune_lr, p.weight_decay, accelerator.device)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    start = resume_step(accelerator, ckpt_dir)
    log = MetricsLog(ws.metrics_file(f"{STAGE}-finetune"), accelerator, f"{STAGE}-finetune", progress,
                     c.finetune_steps)
    z_all, T = torch.from_numpy(np.array(latents)), scheduler.config.num_train_timesteps

    def step_fn(step: int) -> torch.Tensor:
        gen = step_generator(c.seed + 1, step, 0, accelerator.process_index)
        z0 = augment(z_all[torch.randint(0, len(z_all), (p.batch_size,), generator=gen)], gen)
        noise, t = torch.randn(z0.shape, generator=gen), torch.randint(0, T, (len(z0),), generator=gen)
        zt = scheduler.add_noise(z0, noise, t).to(accelerator.device)
        with accelerator.autocast():
            pred = unet(zt, t.to(accelerator.device)).sample.float()
        target = noise if p.prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
        loss = (F.l1_loss if p.loss == "l1" else F.mse_loss)(pred, target.to(accelerator.device))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def after_step(step: int, loss: float) -> None:
        if step % c.log_every == 0 or step == c.finetune_steps:
            log.log({"step": step, "loss": loss, "lr": c.finetune_lr,
                     "images_per_s": log.tick(step, step * p.batch_size)})
        log.report(step, loss=loss)

    result = train_loop(accelerator, start=start, steps=c.finetune_steps, step_fn=step_fn, ckpt_dir=ckpt_dir,
                        checkpoint_every=c.checkpoint_every, total_limit=1, stop=stop, after_step=after_step)
    if not result["stopped"] and accelerator.is_main_process:
        with atomic_dir(ws.finetuned_unet_dir) as tmp:
            accelerator.unwrap_model(unet).save_pretrained(tmp)
            write_labels(tmp, budget_labels(ws, cfg)[0])     # the budget images it trained on
            save_config(cfg, tmp, "lab_config.json")
    return result


@cli_util.guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core classifier",
                                     description="train the noise-aware latent classifier")
    cli_util.add_common(parser)
    args = parser.parse_args(argv)
    cfg = cli_util.resolve_config(args)
    ws = cli_util.workspace(args)
    with cli_util.ProgressReporter() as progress:
        table = train_latent_classifier(ws, cfg, progress=progress)
    print(table.to_string(index=False))
    print(f"saved to {ws.latent_classifier_dir}")
    return 0
