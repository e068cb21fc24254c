"""HistoDiffusion Lab core: data, latent diffusion pre-training, classifier guidance,
selective filtering and augmented-training experiments. Knows nothing of the UI."""


def __getattr__(name: str):
    # `from core import GuidedLatentPipeline` without making `import core` (every CLI, the app's
    # start) pay for torch and diffusers
    if name == "GuidedLatentPipeline":
        from core.generate import GuidedLatentPipeline
        return GuidedLatentPipeline
    raise AttributeError(f"module 'core' has no attribute {name!r}")
