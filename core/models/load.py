"""Load a workspace's trained models, or a UserError that names the stage that makes each; and
the sampling pipeline over them (`load_pipeline`, cached until a model folder changes)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

from core.config import LabConfig
from core.errors import UserError
from core.models.latent_classifier import LatentClassifier
from core.models.unet import prefers_channels_last
from core.workspace import Workspace

if TYPE_CHECKING:
    from core.pipeline import GuidedLatentPipeline

# pipeline component -> (what it is, the file its save_pretrained writes, the command that makes it)
PARTS = {
    "vae": ("autoencoder", "config.json", "python -m core autoencoder"),
    "unet": ("diffusion UNet", "config.json", "python -m core pretrain"),
    "scheduler": ("scheduler", "scheduler_config.json", "python -m core pretrain"),
    "classifier": ("latent classifier", "config.json", "python -m core classifier"),
}


def sampling_unet_dir(ws: Workspace, cfg: LabConfig) -> Path:
    """The fine-tuned UNet when classifier.finetune_unet is on and it exists, else the pre-trained one."""
    if cfg.classifier.finetune_unet and (ws.finetuned_unet_dir / "config.json").exists():
        return ws.finetuned_unet_dir
    return ws.unet_dir


def model_folders(ws: Workspace, cfg: LabConfig | None = None) -> dict[str, Path]:
    """Each pipeline component's folder for this budget view (the UNet sampling uses, with `cfg`)."""
    return {"vae": ws.autoencoder_dir, "unet": ws.unet_dir if cfg is None else sampling_unet_dir(ws, cfg),
            "scheduler": ws.scheduler_dir, "classifier": ws.latent_classifier_dir}


def missing_models(ws: Workspace, cfg: LabConfig | None = None, parts=tuple(PARTS)) -> list[str]:
    """The components among `parts` that are not saved in the workspace yet."""
    folders = model_folders(ws, cfg)
    return [name for name in parts if not (folders[name] / PARTS[name][1]).exists()]


def check_models(ws: Workspace, cfg: LabConfig | None = None, parts=tuple(PARTS)) -> dict[str, Path]:
    """The folders of `parts`, or one UserError naming every one missing and how to make it."""
    folders, missing = model_folders(ws, cfg), missing_models(ws, cfg, parts)
    if missing:
        how = " / ".join(dict.fromkeys(PARTS[name][2] for name in missing))
        raise UserError(f"workspace {ws.root} has no " + ", ".join(f"{PARTS[n][0]} in {folders[n]}" for n in missing)
                        + f" — train {'it' if len(missing) == 1 else 'them'} first ({how}, or run)")
    return {name: folders[name] for name in parts}


def load_autoencoder(ws: Workspace) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(check_models(ws, parts=("vae",))["vae"]).eval()


def load_unet(ws: Workspace) -> UNet2DModel:
    return UNet2DModel.from_pretrained(check_models(ws, parts=("unet",))["unet"]).eval()


def load_scheduler(ws: Workspace) -> DDPMScheduler:
    return DDPMScheduler.from_pretrained(check_models(ws, parts=("scheduler",))["scheduler"])


def load_latent_classifier(ws: Workspace) -> LatentClassifier:
    return LatentClassifier.from_pretrained(check_models(ws, parts=("classifier",))["classifier"]).eval()


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def load_pipeline(ws: Workspace, cfg: LabConfig, device: str | torch.device | None = None,
                  **settings) -> "GuidedLatentPipeline":
    """The budget's GuidedLatentPipeline, configured from cfg.sampling (`settings` override it:
    compile, sampler, ...); loaded once and cached until a model folder changes.

    The root models/ folder is the pipeline; a budget with its own latent classifier (budgets/
    NAME/) or a fine-tuned UNet passes it to `from_pretrained` as a component override.
    `pipe.model_hashes` names its models (the manifests' unet/vae/classifier_hash)."""
    from core.io import folder_hash
    from core.pipeline import GuidedLatentPipeline, write_model_index
    folders = check_models(ws, cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stamp = tuple((str(p), max((f.stat().st_mtime_ns for f in p.iterdir()), default=0)) for p in folders.values())
    key = (str(ws.root), stamp, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            root = Workspace(ws.root)
            write_model_index(root.models_dir)
            overrides = {}
            if folders["classifier"] != root.latent_classifier_dir:
                overrides["classifier"] = LatentClassifier.from_pretrained(folders["classifier"])
            if folders["unet"] != root.unet_dir:
                overrides["unet"] = UNet2DModel.from_pretrained(folders["unet"])
            pipe = GuidedLatentPipeline.from_pretrained(root.models_dir, **overrides).to(device)
            if prefers_channels_last(device, "bf16"):
                pipe.unet.to(memory_format=torch.channels_last)
            pipe.set_progress_bar_config(disable=True)     # callers report progress their own way
            pipe.model_hashes = {f"{k}_hash": folder_hash(folders[k]) for k in ("unet", "vae", "classifier")}
            _CACHE.clear()  # one pipeline in memory at a time
            _CACHE[key] = pipe
        s = cfg.sampling
        return _CACHE[key].configure(**{"mixed_precision": s.mixed_precision, "sampler": s.scheduler,
                                        "classifier_precision": s.classifier_precision, "compile": s.compile,
                                        **settings})
