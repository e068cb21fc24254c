"""Sampling: the `GuidedLatentPipeline` (a diffusers pipeline over the autoencoder, the UNet, its
scheduler and the latent classifier), classifier guidance as pure functions, synthetic sets on
disk, and the model card."""
from core.generate.guidance import condition_mean, condition_score
from core.generate.model_card import write_model_card
from core.generate.pipeline import GuidedLatentPipeline, GuidedOutput, load_pipeline
from core.generate.sampling import generate_dataset, generate_images, made_by_config

__all__ = ["GuidedLatentPipeline", "GuidedOutput", "condition_mean", "condition_score", "generate_dataset",
           "generate_images", "load_pipeline", "made_by_config", "write_model_card"]
