"""The filter classifier: the judge that scores synthetic images for selection, trained on the
label budget's images (its validation images pick the weights), with its class centroids."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from core.config.lab_config import LabConfig
from core.config.store import config_hash, save_config
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


def train_filter_classifier(ws: Workspace, cfg: LabConfig, progress=None, stop=None, seed: int = 0) -> dict:
    """Train on the budget's labeled train images (its val images pick the weights); save weights,
    config, centroids (from the same train images) and labels.csv, the exact set it used."""
    from core.data.budget import budget_labels, write_labels
    labels, classes = budget_labels(ws, cfg)
    train_df, val_df = labels[labels.split == "train"], labels[labels.split == "val"]
    model, history = train_image_classifier(train_df, val_df, classes, cfg.filter_classifier, seed,
                                      progress=progress, stop=stop, stage="filter_classifier")
    if history.attrs["stopped"]:
        return {"stopped": True, "stage": "filter_classifier"}
    images, keep, _ = load_images(train_df["path"], cfg.filter_classifier.image_size)
    _, feats = predict(model, images, cfg.filter_classifier)
    cent = class_centroids(feats, train_df["label"].to_numpy()[keep], len(classes))
    present = np.bincount(train_df["label"].to_numpy()[keep], minlength=len(classes)) > 0
    best = history.attrs["best_val_balanced_accuracy"]
    info = {"backbone": cfg.filter_classifier.backbone, "classes": classes, "image_size": cfg.filter_classifier.image_size,
            "mean": list(MEAN), "std": list(STD), "num_features": int(feats.shape[1]),
            "best_step": history.attrs["best_step"], "val_balanced_accuracy": best,
            "chance": 1 / len(classes), "config_hash": config_hash(cfg.filter_classifier),
            "n_train": int(len(train_df)), "n_val": int(len(val_df)),
            "centroid_classes_present": present.tolist()}
    with atomic_dir(ws.filter_classifier_dir) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                  str(Workspace.weights_of(tmp)))
        save_file({"centroids": cent.contiguous()}, str(Workspace.centroids_of(tmp)))
        atomic_write_json(Workspace.config_of(tmp), info)
        history.to_csv(Workspace.history_of(tmp), index=False)
        write_labels(tmp, labels, ws)
        save_config(cfg, tmp, LAB_CONFIG)
    return {"stopped": False, "classes": classes, "best_step": info["best_step"],
            "val_balanced_accuracy": best, "skipped": history.attrs["skipped"]}


