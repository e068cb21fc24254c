"""Load a workspace's trained models, or a UserError that names the stage that makes each."""
from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from core.errors import UserError
from core.models.backbone import build_backbone
from core.models.latent_classifier import LatentClassifier
from core.workspace import Workspace


def load_autoencoder(ws: Workspace) -> AutoencoderKL:
    if not (ws.autoencoder_dir / "config.json").exists():
        raise UserError(f"no autoencoder in {ws.autoencoder_dir} (run `python -m core autoencoder`)")
    return AutoencoderKL.from_pretrained(ws.autoencoder_dir).eval()


def load_unet(ws: Workspace) -> UNet2DModel:
    if not (ws.unet_dir / "config.json").exists():
        raise UserError(f"no pre-trained UNet in {ws.unet_dir} (run `python -m core pretrain`)")
    return UNet2DModel.from_pretrained(ws.unet_dir).eval()


def load_scheduler(ws: Workspace) -> DDPMScheduler:
    if not (ws.scheduler_dir / "scheduler_config.json").exists():
        raise UserError(f"no scheduler in {ws.scheduler_dir} (run `python -m core pretrain`)")
    return DDPMScheduler.from_pretrained(ws.scheduler_dir)


def load_latent_classifier(ws: Workspace) -> LatentClassifier:
    if not (ws.latent_classifier_dir / "config.json").exists():
        raise UserError(f"no latent classifier in {ws.latent_classifier_dir} "
                        "(train it: python -m core classifier --workspace DIR)")
    return LatentClassifier.from_pretrained(ws.latent_classifier_dir).eval()


def load_filter_classifier(ws: Workspace) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """(model on the compute device, config.json dict, centroids (C, D))."""
    folder = ws.filter_classifier_dir
    for name in ("config.json", "model.safetensors", "centroids.safetensors"):
        if not (folder / name).exists():
            raise UserError(f"filter classifier missing {folder / name} "
                            "(run `python -m core classify --workspace ...` first)")
    info = json.loads((folder / "config.json").read_text())
    model = build_backbone(info["backbone"], len(info["classes"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    cent = load_file(str(folder / "centroids.safetensors"))["centroids"]
    return model, info, cent
