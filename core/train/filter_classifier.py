"""The filter classifier: the judge that scores synthetic images for selection, trained on the
label budget's images (its validation images pick the weights), with its class centroids.

It reads only the `filter_classifier` section and trains with its own seed(s), so it is never one
of the grid's baseline runs (which would accept what that baseline already gets right), and
changing downstream training leaves it as it is. `members` > 1 trains an ensemble, one seed each;
core.evaluate.judge keeps what the members agree on.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from core.config.lab_config import LabConfig
from core.config.store import config_hash, save_config, to_dict
from core.errors import UserError
from core.evaluate.inference import load_images, predict
from core.io import atomic_dir, atomic_write_json
from core.models.backbone import MEAN, STD
from core.train.image_classifier import train_image_classifier
from core.workspace import LAB_CONFIG, Workspace


def class_centroids(features: torch.Tensor, labels, num_classes: int) -> torch.Tensor:
    """Per-class mean of L2-normalised features, re-normalised (the reference's selection rule)."""
    f = F.normalize(features.float(), dim=1)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    cent = torch.zeros(num_classes, f.shape[1])
    cent.index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return F.normalize(cent / counts, dim=1)


def baseline_twin(cfg: LabConfig) -> int | None:
    """The grid seed whose baseline run the filter classifier would be (same settings, same
    seed, same images), or None when it is none of them."""
    own = {k: v for k, v in to_dict(cfg.filter_classifier).items() if k not in ("seed", "members")}
    clash = sorted(set(cfg.filter_classifier.seeds()) & set(cfg.experiment.seeds))
    return clash[0] if clash and own == to_dict(cfg.downstream) else None


def train_filter_classifier(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> dict:
    """Train every member on the budget's labeled train images (its val images pick the weights);
    save weights, centroids (from the same train images), config and labels.csv, the exact set
    it used. Member 0 lies in the folder itself, member i in members/i."""
    from core.data.budget import budget_labels, write_labels
    twin = baseline_twin(cfg)
    if twin is not None:
        raise UserError(f"filter_classifier.seed: seed {twin} is in experiment.seeds and the filter "
                        "classifier's settings are downstream's, so it would be that baseline run; "
                        "give it a seed outside experiment.seeds")
    labels, classes = budget_labels(ws, cfg)
    train_df, val_df = labels[labels.split == "train"], labels[labels.split == "val"]
    fc = cfg.filter_classifier
    trained = []
    for seed in fc.seeds():
        model, history = train_image_classifier(train_df, val_df, classes, fc, seed, progress=progress,
                                                stop=stop, stage="filter_classifier")
        if history.attrs["stopped"]:
            return {"stopped": True, "stage": "filter_classifier"}
        trained.append((model, history, _centroids(model, train_df, fc, len(classes))))
    best = [h.attrs["best_val_balanced_accuracy"] for _, h, _ in trained]
    info = {"backbone": fc.backbone, "classes": classes, "image_size": fc.image_size,
            "mean": list(MEAN), "std": list(STD), "num_features": int(trained[0][2][0].shape[1]),
            "best_step": trained[0][1].attrs["best_step"], "val_balanced_accuracy": best[0],
            "members": len(trained), "seeds": fc.seeds(), "member_val_balanced_accuracy": best,
            "member_best_step": [h.attrs["best_step"] for _, h, _ in trained],
            "chance": 1 / len(classes), "config_hash": config_hash(fc),
            "n_train": int(len(train_df)), "n_val": int(len(val_df)),
            "centroid_classes_present": trained[0][2][1].tolist()}
    with atomic_dir(ws.filter_classifier_dir) as tmp:
        for i, (model, history, (cent, _)) in enumerate(trained):
            folder = Workspace.member_of(tmp, i)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                      str(Workspace.weights_of(folder)))
            save_file({"centroids": cent.contiguous()}, str(Workspace.centroids_of(folder)))
            history.to_csv(Workspace.history_of(folder), index=False)
        atomic_write_json(Workspace.config_of(tmp), info)
        write_labels(tmp, labels)
        save_config(cfg, tmp, LAB_CONFIG)
    skipped = {k: v for _, h, _ in trained for k, v in h.attrs["skipped"].items()}
    return {"stopped": False, "classes": classes, "best_step": info["best_step"], "members": len(trained),
            "val_balanced_accuracy": best[0], "member_val_balanced_accuracy": best, "skipped": skipped}


def _centroids(model, train_df: pd.DataFrame, fc, num_classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """(class centroids of the member's features of the train images, which classes have any)."""
    images, keep, _ = load_images(train_df["path"], fc.image_size)
    _, feats = predict(model, images, fc)
    labels = train_df["label"].to_numpy()[keep]
    return class_centroids(feats, labels, num_classes), np.bincount(labels, minlength=num_classes) > 0
