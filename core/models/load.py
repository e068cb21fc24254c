"""Load a workspace's trained models, or a UserError that names the stage that makes each; and
which of a budget's pipeline components exist (`check_models`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from core.config.lab_config import LabConfig
from core.errors import UserError
from core.models.backbone import build_backbone
from core.models.latent_classifier import LatentClassifier
from core.workspace import Workspace

# pipeline component -> (what it is, the file its save_pretrained writes, the command that makes it)
PARTS = {
    "vae": ("autoencoder", Workspace.config_of, "python -m core autoencoder"),
    "unet": ("diffusion UNet", Workspace.config_of, "python -m core pretrain"),
    "scheduler": ("scheduler", Workspace.scheduler_config_of, "python -m core pretrain"),
    "latent_classifier": ("latent classifier", Workspace.config_of, "python -m core latent-classifier"),
}


def sampling_unet_dir(ws: Workspace, cfg: LabConfig) -> Path:
    """The fine-tuned UNet when classifier.finetune_unet is on and it exists, else the pre-trained one."""
    if cfg.latent_classifier.finetune_unet and Workspace.config_of(ws.finetuned_unet_dir).exists():
        return ws.finetuned_unet_dir
    return ws.unet_dir


def model_folders(ws: Workspace, cfg: LabConfig | None = None) -> dict[str, Path]:
    """Each pipeline component's folder for this budget view (the UNet sampling uses, with `cfg`)."""
    return {"vae": ws.autoencoder_dir, "unet": ws.unet_dir if cfg is None else sampling_unet_dir(ws, cfg),
            "scheduler": ws.scheduler_dir, "latent_classifier": ws.latent_classifier_dir}


def missing_models(ws: Workspace, cfg: LabConfig | None = None, parts=tuple(PARTS)) -> list[str]:
    """The components among `parts` that are not saved in the workspace yet."""
    folders = model_folders(ws, cfg)
    return [name for name in parts if not PARTS[name][1](folders[name]).exists()]


def check_models(ws: Workspace, cfg: LabConfig | None = None, parts=tuple(PARTS)) -> dict[str, Path]:
    """The folders of `parts`, or one UserError naming every one missing and how to make it."""
    folders, missing = model_folders(ws, cfg), missing_models(ws, cfg, parts)
    if missing:
        how = " / ".join(dict.fromkeys(PARTS[name][2] for name in missing))
        raise UserError(f"workspace {ws.root} has no " + ", ".join(f"{PARTS[n][0]} in {folders[n]}" for n in missing)
                        + f" — train {'it' if len(missing) == 1 else 'them'} first ({how}, or run)")
    return {name: folders[name] for name in parts}


# weight files that torch.load would unpickle: never loaded, and refused when they sit in a model folder
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def refuse_pickled(folder: str | Path) -> None:
    """UserError, one line, when a model folder holds a pickled weight file (beside its
    safetensors or instead of them): diffusers would fall back to it ("unsafe serialization")."""
    found = sorted(p.name for pattern in PICKLED for p in Path(folder).glob(pattern))
    if found:
        raise UserError(f"{folder} holds {', '.join(found)}: pickled weights, which the lab never loads "
                        "(safetensors only); remove the file, or re-save the model with save_pretrained")


def from_folder(cls, folder: str | Path, **kwargs):
    """`cls.from_pretrained(folder, use_safetensors=True)` after `refuse_pickled`: the one way the
    lab loads a diffusers model folder."""
    refuse_pickled(folder)
    return cls.from_pretrained(folder, use_safetensors=True, **kwargs)


def load_autoencoder(ws: Workspace) -> AutoencoderKL:
    return from_folder(AutoencoderKL, check_models(ws, parts=("vae",))["vae"]).eval()


def load_unet(ws: Workspace) -> UNet2DModel:
    return from_folder(UNet2DModel, check_models(ws, parts=("unet",))["unet"]).eval()


def load_scheduler(ws: Workspace) -> DDPMScheduler:
    return DDPMScheduler.from_pretrained(check_models(ws, parts=("scheduler",))["scheduler"])


def load_latent_classifier(ws: Workspace) -> LatentClassifier:
    return from_folder(LatentClassifier, check_models(ws, parts=("latent_classifier",))["latent_classifier"]).eval()


def load_filter_classifier(ws: Workspace, member: int = 0) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """(model on the compute device, its config dict, centroids (C, D)) of one ensemble member;
    member 0 is the folder itself, the others its `members/I` sub-folders."""
    root = ws.filter_classifier_dir
    folder = Workspace.member_of(root, member)
    config, weights, centroids = (Workspace.config_of(root), Workspace.weights_of(folder),
                                  Workspace.centroids_of(folder))
    for path in (config, weights, centroids):
        if not path.exists():
            raise UserError(f"filter classifier missing {path} "
                            "(run `python -m core filter-classifier --workspace ...` first)")
    refuse_pickled(folder)
    info = json.loads(config.read_text())
    model = build_backbone(info["backbone"], len(info["classes"]))
    model.load_state_dict(load_file(str(weights)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    cent = load_file(str(centroids))["centroids"]
    return model, info, cent


def load_filter_members(ws: Workspace) -> tuple[list[tuple[torch.nn.Module, torch.Tensor]], dict]:
    """([(model, centroids)] for every ensemble member, the config dict); one member for a
    filter classifier saved before ensembles."""
    model, info, cent = load_filter_classifier(ws)
    members = [(model, cent)]
    for i in range(1, int(info.get("members", 1))):
        other, _, other_cent = load_filter_classifier(ws, i)
        members.append((other, other_cent))
    return members, info
