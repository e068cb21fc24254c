"""HistoDiffusion Lab core: data, latent diffusion pre-training, classifier guidance,
selective filtering and augmented-training experiments. Knows nothing of the UI."""
