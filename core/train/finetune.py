"""Continuing the pre-trained UNet on one label budget's TRAIN latents (classifier.finetune_unet):
the paper's "fine-tune on the labeled target set", with the labels unused.

The same step as pre-training (core.train.pretrain.make_step_fn: flips/rotations, clipping, EMA) drawn
uniformly from the budget's latents instead of the pools, at classifier.finetune_lr, constant;
the EMA weights are saved as pre-training saves them (pretrain.save_dtype), with labels.csv
naming the images it saw. The sampler prefers the result when the switch is on.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from core.data.budget import budget_labels, write_labels
from core.config.lab_config import LabConfig
from core.config.store import config_hash, identity
from core.errors import UserError
from core.models import from_folder, load_scheduler, prefers_channels_last
from core.train.pretrain import ema_unet, register_ema_hooks, make_step_fn
from core.train.trainer import Trainer, TrainSpec, adamw
from core.workspace import Workspace

STAGE = "unet_finetune"


def finetune_unet(ws: Workspace, cfg: LabConfig, latents: np.ndarray, progress=None, stop=None) -> dict:
    """Fine-tune (or resume) into ws.finetuned_unet_dir; returns the trainer's result."""
    c, p = cfg.latent_classifier, cfg.pretrain
    if not Workspace.config_of(ws.unet_dir).exists():
        raise UserError(f"no pre-trained UNet in {ws.unet_dir} to fine-tune (run: python -m core pretrain)")
    if len(latents) == 0:
        raise UserError(f"the label budget in {ws.labels_file} has no training image to fine-tune on")
    # the classifier stage's precision, seed and checkpoint settings; pre-training's batch and loss
    step_cfg = replace(p, seed=c.seed + 1)
    trainer = Trainer(TrainSpec(
        stage=STAGE, steps=c.finetune_steps, seed=c.seed, precision=c.mixed_precision, batch_size=p.batch_size,
        ckpt_dir=ws.checkpoints_dir / STAGE, checkpoint_every=c.checkpoint_every, grad_accum=p.grad_accum,
        total_limit=c.checkpoints_total_limit, metrics_file=ws.metrics_file(STAGE), log_every=c.log_every,
        run_key=config_hash(identity(c), identity(p), len(latents)), compile=c.compile), cfg)
    acc = trainer.acc
    unet = from_folder(UNet2DModel, ws.unet_dir)     # the pre-trained EMA weights, as fp32
    channels_last = prefers_channels_last(acc.device, acc.mixed_precision)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    ema = EMAModel(unet.parameters(), decay=p.ema_decay, foreach=True, model_cls=UNet2DModel,
                   model_config=unet.config)
    optimizer = adamw(unet.parameters(), c.finetune_lr, p.weight_decay, acc.device)
    unet, optimizer = trainer.prepare(unet, optimizer)
    ema.to(acc.device)
    register_ema_hooks(acc, ema)
    uniform = np.full(len(latents), 1.0 / len(latents))
    step_fn = make_step_fn(acc, unet, load_scheduler(ws), optimizer, ema, latents, uniform, step_cfg,
                           channels_last, trainer.compiled(unet))
    result = trainer.run(step_fn, progress=progress, stop=stop)
    if not result["stopped"]:
        final = ema_unet(acc.unwrap_model(unet), ema, p.save_dtype) if acc.is_main_process else None

        def write(tmp):
            final.save_pretrained(tmp, safe_serialization=True)
            write_labels(tmp, budget_labels(ws, cfg)[0])     # the budget images it trained on
        trainer.save(ws.finetuned_unet_dir, write)
    trainer.end()
    return result
