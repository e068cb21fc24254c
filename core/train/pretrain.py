"""Unconditional latent diffusion pre-training (diffusers UNet2DModel + DDPMScheduler) via Accelerate.

Reads scaled latents from the latent cache (no VAE in the loop), mixes pools by weight, trains
with mixed precision, gradient accumulation and diffusers' EMAModel, checkpoints with
`accelerator.save_state` (atomic, total limit, resume = latest), writes EMA sample grids and
saves the EMA UNet + scheduler in diffusers format.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from core.errors import UserError
from core.config.lab_config import LabConfig, PretrainConfig
from core.config.store import save_config
from core.data.tables import load_pools
from core.data.images import to_pil
from core.io import save_png
from core.train.latent_cache import augment, latent_cache
from core.models import (build_scheduler, build_unet, decode, load_autoencoder, prefers_channels_last,
                         refuse_pickled)
from core.train.trainer import Trainer, TrainSpec, adamw, pool_row_weights, step_generator, step_indices
from core.workspace import LAB_CONFIG, Workspace

STAGE = "pretrain"
SHAPE_FIELDS = ("block_out_channels", "layers_per_block", "attention_resolutions", "attention_head_dim",
                "resnet_time_scale_shift", "resblock_updown", "num_train_timesteps")
GRID_SIZE = 16            # images per EMA sample grid (4 x 4)
GRID_STEPS = 25           # DDIM steps for the grid: a preview, not the final sampler


def diffusion_loss(unet, scheduler: DDPMScheduler, z0: torch.Tensor, g: torch.Generator,
                   cfg: PretrainConfig, autocast, channels_last: bool = False) -> torch.Tensor:
    """One noising + prediction + loss (epsilon or v target, L1 or L2)."""
    noise = torch.randn(z0.shape, generator=g).to(z0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=g).to(z0.device)
    zt = scheduler.add_noise(z0, noise, t)
    if channels_last:
        zt = zt.contiguous(memory_format=torch.channels_last)
    with autocast():
        pred = unet(zt, t).sample
    target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
    loss_fn = F.l1_loss if cfg.loss == "l1" else F.mse_loss
    return loss_fn(pred.float(), target)


def make_step_fn(acc, unet, scheduler, optimizer, ema, latents, weights, cfg: PretrainConfig,
                 channels_last: bool = False, forward=None):
    """The training step: cached latents -> flips/rotations -> noise -> UNet -> AdamW -> EMA (the
    lr schedule is stepped by the scaffold, core.train.trainer.Trainer). `forward`: what runs the UNet
    (Trainer.compiled(unet)); `unet` itself for accumulation, clipping and EMA."""
    forward = unet if forward is None else forward

    def step_fn(step: int) -> torch.Tensor:
        unet.train()
        losses = []
        for micro in range(cfg.grad_accum):
            idx = step_indices(weights, cfg.batch_size, cfg.seed, step, micro, acc.process_index,
                               acc.num_processes)
            g = step_generator(cfg.seed, step, micro, acc.process_index)
            z0 = augment(torch.from_numpy(np.asarray(latents[idx])), g).to(acc.device)
            with acc.accumulate(unet):
                loss = diffusion_loss(forward, scheduler, z0, g, cfg, acc.autocast, channels_last)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        ema.step(unet.parameters())
        return torch.stack(losses).mean()
    return step_fn


@torch.no_grad()
def sample_latents(unet: UNet2DModel, scheduler, n: int, seed: int, steps: int = GRID_STEPS) -> torch.Tensor:
    """Unconditional DDIM latents. Hand-written loop: diffusers' DDIMPipeline post-processes its
    output as pixels (clamp to [0, 1]), which would destroy latents."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    param = next(unet.parameters())
    g = torch.Generator().manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    z = torch.randn((n, c, s, s), generator=g).to(param.device)
    for t in ddim.timesteps:
        eps = unet(z, t.to(param.device)).sample
        z = ddim.step(eps, t, z, eta=0.0).prev_sample
    return z


def save_grid(images: list[Image.Image], path: Path, params: dict) -> Path:
    """The images on a near-square grid, row by row, no padding, empty cells white."""
    cols = math.ceil(math.sqrt(len(images)))
    grid = make_grid([pil_to_tensor(im) for im in images], nrow=cols, padding=0, pad_value=255)
    return save_png(to_pil_image(grid), path, params)


def pretrain(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> dict:
    """Pre-train (or resume) the unconditional latent UNet; save EMA UNet + scheduler."""
    pcfg = cfg.pretrain
    vae = load_autoencoder(ws)
    pools = load_pools(ws)
    if pools.empty:
        raise UserError(f"{ws.pools_file} lists no images")
    latents = latent_cache(ws, vae, pools["path"].tolist(), cfg.data.image_size, progress=progress, stop=stop,
                           jitter=pcfg.stain_jitter)
    if latents is None:
        return {"step": 0, "stopped": True, "reason": "stopped"}
    weights = pool_row_weights(pools.iloc[latents.kept].reset_index(drop=True))
    trainer = Trainer(TrainSpec(
        stage=STAGE, steps=pcfg.steps, seed=pcfg.seed, precision=pcfg.mixed_precision, batch_size=pcfg.batch_size,
        ckpt_dir=ws.checkpoints_dir / STAGE, checkpoint_every=pcfg.checkpoint_every,
        total_limit=pcfg.checkpoints_total_limit, grad_accum=pcfg.grad_accum, schedule="cosine",
        warmup_steps=pcfg.warmup_steps, metrics_file=ws.metrics_file(STAGE), log_every=pcfg.log_every,
        shape=(STAGE, SHAPE_FIELDS), trackers=True, compile=pcfg.compile), cfg)
    acc = trainer.acc
    torch.manual_seed(pcfg.seed)       # every rank starts its EMA from the same weights
    unet = build_unet(pcfg, latents.shape[-1], latents.shape[1])
    channels_last = prefers_channels_last(acc.device, acc.mixed_precision)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    scheduler = build_scheduler(pcfg)
    ema = EMAModel(unet.parameters(), decay=pcfg.ema_decay, foreach=True,
                   model_cls=UNet2DModel, model_config=unet.config)
    optimizer = adamw(unet.parameters(), pcfg.lr, pcfg.weight_decay, acc.device)
    unet, optimizer = trainer.prepare(unet, optimizer)
    ema.to(acc.device)
    register_ema_hooks(acc, ema)
    step_fn = make_step_fn(acc, unet, scheduler, optimizer, ema, latents, weights, pcfg, channels_last,
                           trainer.compiled(unet))

    def on_step(step: int, loss: float) -> None:
        if (step % pcfg.sample_every == 0 or step == pcfg.steps) and acc.is_main_process:
            _ema_grid(acc.unwrap_model(unet), ema, scheduler, vae, ws, step, pcfg.seed)

    result = trainer.run(step_fn, progress=progress, stop=stop, on_step=on_step)
    result["skipped_images"] = latents.skipped
    if not result["stopped"]:
        final = ema_unet(acc.unwrap_model(unet), ema, pcfg.save_dtype) if acc.is_main_process else None
        trainer.save(ws.unet_dir, lambda tmp: final.save_pretrained(tmp, safe_serialization=True))
        trainer.save(ws.scheduler_dir, scheduler.save_pretrained)
        if acc.is_main_process:
            save_config(cfg, ws.samples_dir / STAGE, LAB_CONFIG)
        result.update(unet_dir=str(ws.unet_dir), scheduler_dir=str(ws.scheduler_dir))
    trainer.end()
    return result


def register_ema_hooks(acc, ema: EMAModel) -> None:
    """EMA weights travel inside each checkpoint as a diffusers safetensors folder (`unet_ema/`),
    as in diffusers' train_unconditional — accelerate's own custom-object path would pickle it."""
    def save_hook(models, weights, output_dir):
        if acc.is_main_process:
            ema.save_pretrained(str(Path(output_dir) / "unet_ema"))

    def load_hook(models, input_dir):
        refuse_pickled(Path(input_dir) / "unet_ema")     # EMAModel's loader takes no use_safetensors
        loaded = EMAModel.from_pretrained(str(Path(input_dir) / "unet_ema"), UNet2DModel, foreach=True)
        ema.load_state_dict(loaded.state_dict())
        ema.to(acc.device)

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)


def _ema_grid(unet: UNet2DModel, ema: EMAModel, scheduler, vae, ws: Workspace, step: int, seed: int) -> Path:
    """EMA sample grid decoded through the VAE; the training weights are restored afterwards."""
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    try:
        unet.eval()
        z = sample_latents(unet, scheduler, GRID_SIZE, seed)
        with torch.no_grad():
            images = to_pil(decode(vae, z.float().cpu()))
    finally:
        ema.restore(unet.parameters())
    return save_grid(images, ws.grid_file(STAGE, step),
                     {"stage": STAGE, "step": step, "seed": seed, "sampler": "ddim", "steps": GRID_STEPS,
                      "eta": 0.0, "weights": "ema"})


def ema_unet(unet: UNet2DModel, ema: EMAModel, save_dtype: str = "fp32") -> UNet2DModel:
    """The EMA weights in a clean model (no EMA bookkeeping keys in its config), as saved: in
    fp16 when `save_dtype` says so (diffusers loads them back as fp32, the rounded values)."""
    final = UNet2DModel.from_config(unet.config)
    ema.copy_to(final.parameters())
    if save_dtype == "fp16":
        final = final.half()
    return final.to(memory_format=torch.contiguous_format)
