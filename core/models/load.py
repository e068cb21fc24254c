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
    if not Workspace.config_of(ws.autoencoder_dir).exists():
        raise UserError(f"no autoencoder in {ws.autoencoder_dir} (run `python -m core autoencoder`)")
    return AutoencoderKL.from_pretrained(ws.autoencoder_dir).eval()


def load_unet(ws: Workspace) -> UNet2DModel:
    if not Workspace.config_of(ws.unet_dir).exists():
        raise UserError(f"no pre-trained UNet in {ws.unet_dir} (run `python -m core pretrain`)")
    return UNet2DModel.from_pretrained(ws.unet_dir).eval()


def load_scheduler(ws: Workspace) -> DDPMScheduler:
    if not Workspace.scheduler_config_of(ws.scheduler_dir).exists():
        raise UserError(f"no scheduler in {ws.scheduler_dir} (run `python -m core pretrain`)")
    return DDPMScheduler.from_pretrained(ws.scheduler_dir)


def load_latent_classifier(ws: Workspace) -> LatentClassifier:
    if not Workspace.config_of(ws.latent_classifier_dir).exists():
        raise UserError(f"no latent classifier in {ws.latent_classifier_dir} "
                        "(train it: python -m core classifier --workspace DIR)")
    return LatentClassifier.from_pretrained(ws.latent_classifier_dir).eval()


def load_filter_classifier(ws: Workspace) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """(model on the compute device, config.json dict, centroids (C, D))."""
    folder = ws.filter_classifier_dir
    config, weights, centroids = (Workspace.config_of(folder), Workspace.weights_of(folder),
                                  Workspace.centroids_of(folder))
    for path in (config, weights, centroids):
        if not path.exists():
            raise UserError(f"filter classifier missing {path} "
                            "(run `python -m core classify --workspace ...` first)")
    info = json.loads(config.read_text())
    model = build_backbone(info["backbone"], len(info["classes"]))
    model.load_state_dict(load_file(str(weights)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    cent = load_file(str(centroids))["centroids"]
    return model, info, cent
