"""Sampling: the `GuidedLatentPipeline` (a diffusers pipeline over the autoencoder, the UNet, its
scheduler and the latent classifier) and its cached loader, classifier guidance as pure
functions, sampling from seeds (the one batching rule), synthetic sets on disk, sampling
requests read back from a PNG, and the model card."""
from core.generate.guidance import condition_mean, condition_score
from core.generate.loading import load_pipeline
from core.generate.model_card import write_model_card
from core.generate.pipeline import GuidedLatentPipeline, GuidedOutput, PipelineSettings
from core.generate.requests import SamplingRequest, png_params, request_from_params
from core.generate.sampling import SampledBatch, generate_dataset, generate_images, made_by_config, sample_seeds

__all__ = ["GuidedLatentPipeline", "GuidedOutput", "PipelineSettings", "SampledBatch", "SamplingRequest",
           "condition_mean", "condition_score", "generate_dataset", "generate_images", "load_pipeline",
           "made_by_config", "png_params", "request_from_params", "sample_seeds", "write_model_card"]
