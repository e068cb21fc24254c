"""A budget's `GuidedLatentPipeline`, loaded once and shared: `load_pipeline`.

Pipelines are cached per (model folders and their stamps, settings, device). A pipeline handed
out is never changed: a lookup with other settings gets another pipeline over the same frozen
modules (`GuidedLatentPipeline.with_settings`), so a sampling job never sees its settings move
under it. One set of models is kept in memory at a time.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

from core.config.lab_config import LabConfig, SamplingConfig
from core.generate.pipeline import GuidedLatentPipeline, PipelineSettings, component_hashes
from core.io import atomic_write_json
from core.models.latent_classifier import LatentClassifier
from core.models.load import check_models
from core.models.unet import prefers_channels_last
from core.workspace import Workspace


def model_index() -> dict:
    """The model_index.json of a workspace's models/ folder: the pipeline's class and each
    component's (library, class), as save_pretrained writes them. A class of this package is
    named by its module path, which diffusers imports as it stands (no remote code, no Hub)."""
    components = {"vae": AutoencoderKL, "unet": UNet2DModel, "scheduler": DDPMScheduler,
                  "latent_classifier": LatentClassifier}
    return {"_class_name": GuidedLatentPipeline.__name__, "_diffusers_version": diffusers.__version__,
            **{name: ["diffusers" if cls.__module__.startswith("diffusers") else cls.__module__, cls.__name__]
               for name, cls in components.items()}}


def write_model_index(folder: str | Path) -> Path:
    """Write `folder`/model_index.json unless it already says the same (its mtime then stays)."""
    path = Workspace.model_index_of(folder)
    wanted = model_index()
    try:
        if json.loads(path.read_text()) == wanted:
            return path
    except (OSError, ValueError):
        pass
    atomic_write_json(path, wanted)
    return path


def settings_of(sampling: SamplingConfig, **overrides) -> PipelineSettings:
    """The pipeline settings a config's sampling section asks for, with `overrides` (UserError if bad)."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(PipelineSettings)}
    if unknown:
        raise TypeError(f"unknown pipeline setting(s): {', '.join(sorted(unknown))}")
    return PipelineSettings(**{"mixed_precision": sampling.mixed_precision, "sampler": sampling.sampler,
                               "classifier_precision": sampling.classifier_precision,
                               "compile": sampling.compile, "margin": sampling.latent_margin, **overrides})


_CACHE: dict = {}       # (models, settings) -> pipeline
_CACHE_LOCK = threading.Lock()


def load_pipeline(ws: Workspace, cfg: LabConfig, device: str | torch.device | None = None,
                  **settings) -> GuidedLatentPipeline:
    """The budget's GuidedLatentPipeline with the settings cfg.sampling asks for (`settings`
    override them: compile, sampler, mixed_precision, classifier_precision, margin).

    The root models/ folder is the pipeline; a budget with its own latent classifier (budgets/
    NAME/) or a fine-tuned UNet passes it to `from_pretrained` as a component override.

    Returns:
        A pipeline whose settings never change, cached until a model folder changes; its
        `model_hashes` (also in every `GuidedOutput`) name its models as the manifests do.
    """
    folders = check_models(ws, cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    wanted = settings_of(cfg.sampling, **settings)
    stamps = tuple((str(p), max((f.stat().st_mtime_ns for f in p.iterdir()), default=0)) for p in folders.values())
    models = (str(ws.root), stamps, str(device))
    with _CACHE_LOCK:
        pipe = _CACHE.get((models, wanted))
        if pipe is None:
            loaded = next((p for (m, _), p in _CACHE.items() if m == models), None)
            if loaded is None:
                _CACHE.clear()          # one set of models in memory at a time
                pipe = _load(ws, folders, device, wanted)
            else:
                pipe = loaded.with_settings(**dataclasses.asdict(wanted))
            _CACHE[models, wanted] = pipe
        return pipe


def _load(ws: Workspace, folders: dict[str, Path], device: torch.device,
          settings: PipelineSettings) -> GuidedLatentPipeline:
    root = Workspace(ws.root)
    write_model_index(root.models_dir)
    overrides = {}
    if folders["latent_classifier"] != root.latent_classifier_dir:
        overrides["latent_classifier"] = LatentClassifier.from_pretrained(folders["latent_classifier"])
    if folders["unet"] != root.unet_dir:
        overrides["unet"] = UNet2DModel.from_pretrained(folders["unet"])
    pipe = GuidedLatentPipeline.from_pretrained(root.models_dir, **overrides, **dataclasses.asdict(settings),
                                                model_hashes=component_hashes(folders)).to(device)
    if prefers_channels_last(device, "bf16"):
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)     # callers report progress their own way
    return pipe
