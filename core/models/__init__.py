"""Model definitions and builders, apart from the code that trains them (as diffusers and timm
keep them). Trainers, the pipeline and the app import models from here; models import no stage."""
from core.models.autoencoder import build_autoencoder, decode, encode
from core.models.backbone import build_backbone
from core.models.discriminator import PatchDiscriminator
from core.models.latent_classifier import LatentClassifier, build_classifier
from core.models.load import (check_models, load_autoencoder, load_latent_classifier, load_pipeline, load_scheduler,
                              load_unet, missing_models, sampling_unet_dir)
from core.models.unet import build_scheduler, build_unet, prefers_channels_last

__all__ = ["LatentClassifier", "PatchDiscriminator", "build_autoencoder", "build_backbone", "build_classifier",
           "build_scheduler", "build_unet", "check_models", "decode", "encode", "load_autoencoder",
           "load_latent_classifier", "load_pipeline", "load_scheduler", "load_unet", "missing_models",
           "prefers_channels_last", "sampling_unet_dir"]
