"""Model definitions and builders, apart from the code that trains them (as diffusers and timm
keep them). Trainers, the pipeline and the app import models from here; models import no stage."""
from core.models.autoencoder import build_autoencoder, decode, edge_padding, encode, factor
from core.models.backbone import MEAN, STD, build_backbone
from core.models.discriminator import PatchDiscriminator
from core.models.latent_classifier import LatentClassifier, build_classifier
from core.models.load import (check_models, from_folder, load_autoencoder, load_filter_classifier, load_filter_members,
                              load_latent_classifier,
                              load_scheduler, load_unet, missing_models, refuse_pickled,
                              sampling_unet_dir)
from core.models.unet import build_scheduler, build_unet, prefers_channels_last

__all__ = ["MEAN", "STD", "LatentClassifier", "PatchDiscriminator", "build_autoencoder", "build_backbone",
           "build_classifier", "build_scheduler", "build_unet", "check_models", "decode", "edge_padding", "encode", "factor", "from_folder",
           "load_autoencoder", "load_filter_classifier", "load_filter_members", "load_latent_classifier", "load_scheduler", "load_unet",
           "missing_models", "prefers_channels_last", "refuse_pickled", "sampling_unet_dir"]
