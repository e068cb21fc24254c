"""Load a workspace's trained models, or a UserError that names the stage that makes each."""
from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

from core.errors import UserError
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
