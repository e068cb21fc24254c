"""The trainers, on one scaffold (`Trainer` + `TrainSpec`): the autoencoder, UNet pre-training and
its latent cache, the noise-aware latent classifier and the UNet fine-tune, the filter classifier
and the grid's downstream image classifiers. Each takes (ws, cfg, progress, stop)."""
from core.train.autoencoder import train_autoencoder
from core.train.filter_classifier import train_filter_classifier
from core.train.finetune import finetune_unet
from core.train.image_classifier import metrics_on_test, train_image_classifier
from core.train.latent_classifier import train_latent_classifier
from core.train.trainer import Trainer, TrainSpec

# `pretrain` and `latent_cache` are modules of this package and keep those names here (their
# functions: core.train.pretrain.pretrain, core.train.latent_cache.latent_cache)
__all__ = ["TrainSpec", "Trainer", "finetune_unet", "metrics_on_test", "train_autoencoder", "train_filter_classifier",
           "train_image_classifier", "train_latent_classifier"]
