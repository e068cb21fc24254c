"""The downstream backbone classifier (timm) and the filter classifier that scores synthetic images.

Every run of the protocol grid goes through `train_classifier`: the same optimizer-step budget,
augmentations and seeds for the baseline and the augmented arm; the weights kept are those of the
best VALIDATION balanced accuracy (the test split is only touched by `evaluate` at the very end).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from safetensors.torch import save_file
from torchvision.transforms import v2

from core.errors import UserError
from core.config import ClassifyConfig, LabConfig, config_hash, save_config
from core.inference import _to_input, load_images, predict  # noqa: F401  (callers and tests import them from here too)
from core.io import atomic_dir, atomic_write_json
from core.metrics import classification_metrics
from core.models import MEAN, STD, build_backbone  # noqa: F401  (MEAN/STD: callers' name for the input normalisation)
from core.training import Trainer, TrainSpec
from core.workspace import LAB_CONFIG, Workspace


def _augmenter() -> v2.Compose:
    # Tissue has no canonical orientation: flips + 90-degree turns; light jitter for stain variation.
    rot90 = v2.RandomChoice([v2.Lambda(lambda x, k=k: torch.rot90(x, k, dims=(-2, -1))) for k in range(4)])
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), rot90,
                       v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02)])


def _augment(batch_u8: torch.Tensor, aug: v2.Compose) -> torch.Tensor:
    # v2 transforms draw one set of parameters per call, so each image gets its own call.
    return torch.stack([aug(img) for img in batch_u8])


# --- training -------------------------------------------------------------------------------

def _classify_cfg(cfg) -> ClassifyConfig:
    """Accept the whole LabConfig as well as its `classify` section."""
    return cfg.classify if isinstance(cfg, LabConfig) else cfg


def train_classifier(train_df: pd.DataFrame, val_df: pd.DataFrame, classes: list[str],
                     cfg: ClassifyConfig, seed: int, extra_df: pd.DataFrame | None = None,
                     progress=None, stop=None, stage: str = "classify"):
    """Train `cfg.backbone` on train_df (+ extra_df, e.g. accepted synthetic images).

    Frames need `path` and `label`. `cfg.budget == "steps"`: exactly `cfg.steps` optimizer steps
    whatever the data size (equal compute for every arm); "epochs": `cfg.epochs` passes. The
    batch is capped at the training set's size. Validation runs `cfg.evals` times; the weights of
    the best validation balanced accuracy are returned. Returns (model, history); history.attrs
    holds best_step, best_val_balanced_accuracy, steps, batch_size, skipped files and stopped.
    """
    cfg = _classify_cfg(cfg)
    frames = [train_df] + ([extra_df] if extra_df is not None and len(extra_df) else [])
    full = pd.concat([f[["path", "label"]] for f in frames], ignore_index=True)
    x_train, keep, skipped = load_images(full["path"], cfg.image_size)
    y_train = torch.as_tensor(full["label"].to_numpy()[keep], dtype=torch.long)
    x_val, vkeep, vskipped = load_images(val_df["path"], cfg.image_size)
    y_val = val_df["label"].to_numpy()[vkeep]
    skipped.update(vskipped)
    n = len(x_train)
    if n < 2:   # BatchNorm cannot train on a single image
        raise UserError(f"training needs at least 2 readable images, got {n} ({len(skipped)} skipped)")
    batch = min(cfg.batch_size, n)
    total = cfg.steps if cfg.budget == "steps" else cfg.epochs * (n // batch)
    eval_at = set(np.linspace(total / cfg.evals, total, cfg.evals).round().astype(int).tolist())
    # Kept in memory, never checkpointed: a grid run is minutes long and restarted whole. The
    # Accelerator is what lets it use several GPUs (torchrun / accelerate launch).
    trainer = Trainer(TrainSpec(stage=stage, steps=total, seed=seed, precision=cfg.mixed_precision,
                                batch_size=batch, schedule="cosine", warmup_steps=total // 10,
                                compile=cfg.compile))
    acc = trainer.acc
    model = build_backbone(cfg.backbone, len(classes), cfg.pretrained_path)
    model = model.to(acc.device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = trainer.prepare(model, opt)
    forward = trainer.compiled(model)
    gen = torch.Generator().manual_seed(seed)   # not per rank: all ranks walk one order of the data
    aug = _augmenter()
    order, cursor = torch.randperm(n, generator=gen), 0
    rows, best, best_state, best_step = [], -1.0, None, None
    window = {"loss": 0.0, "steps": 0, "t0": time.perf_counter()}

    def step_fn(step: int) -> torch.Tensor:
        nonlocal order, cursor
        if cursor + batch > n:     # a new pass; the remainder is dropped so every batch is full
            order, cursor = torch.randperm(n, generator=gen), 0
        # this rank's slice of the global batch: the step budget and batch stay those of one device
        idx = order[cursor:cursor + batch][acc.process_index::acc.num_processes]
        cursor += batch
        model.train()
        x = _to_input(_augment(x_train[idx], aug), acc.device)
        with acc.autocast():
            loss = F.cross_entropy(forward(x).float(), y_train[idx].to(acc.device), label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        return loss

    def on_step(step: int, loss: float) -> None:
        nonlocal best, best_state, best_step
        window["loss"], window["steps"] = window["loss"] + loss, window["steps"] + 1
        if step not in eval_at:
            return
        net = acc.unwrap_model(model)
        accuracy, balanced = _validate(acc, net, x_val, y_val, classes, cfg)
        rows.append({"step": step, "epoch": step * batch / n, "train_loss": window["loss"] / window["steps"],
                     "lr": trainer.lr, "val_accuracy": accuracy, "val_balanced_accuracy": balanced,
                     "images_per_s": window["steps"] * batch / max(time.perf_counter() - window["t0"], 1e-9)})
        window.update(loss=0.0, steps=0, t0=time.perf_counter())
        score = balanced if len(x_val) else step   # no val: keep the last
        if score > best:
            best, best_state, best_step = score, copy.deepcopy(net.state_dict()), step

    result = trainer.run(step_fn, progress=progress, stop=stop, on_step=on_step)
    trainer.end()
    model = acc.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None:
        model.load_state_dict(best_state)
    history = pd.DataFrame(rows)
    has_val = len(x_val) > 0 and best_state is not None
    history.attrs.update(best_step=best_step, best_val_balanced_accuracy=float(best) if has_val else None,
                         steps=result["step"], batch_size=batch, budget=cfg.budget,
                         skipped=skipped, stopped=result["stopped"], n_train=int(n), n_val=int(len(x_val)))
    return model.eval(), history


def _validate(acc, net, x_val: torch.Tensor, y_val, classes: list[str], cfg: ClassifyConfig) -> tuple[float, float]:
    """(accuracy, balanced accuracy) on the validation images, measured by the main process and
    sent to every rank, so all ranks keep the same best weights."""
    if not len(x_val):
        return np.nan, np.nan
    scores = torch.zeros(2, dtype=torch.float64, device=acc.device)
    if acc.is_main_process:
        val = evaluate_arrays(net, x_val, y_val, classes, cfg)
        scores = torch.tensor([val["accuracy"], val["balanced_accuracy"]], dtype=torch.float64, device=acc.device)
    scores = broadcast(scores)
    return float(scores[0]), float(scores[1])


def evaluate_arrays(model, images: torch.Tensor, labels, classes: list[str], cfg: ClassifyConfig) -> dict:
    probs, _ = predict(model, images, cfg)
    out = classification_metrics(np.asarray(labels), probs.argmax(1).numpy(), classes)
    out["pred"] = probs.argmax(1).tolist()
    return out


def evaluate(model: torch.nn.Module, df: pd.DataFrame, classes: list[str], cfg: ClassifyConfig) -> dict:
    """Test metrics (accuracy, balanced accuracy, macro-F1, per-class recall, confusion matrix)."""
    cfg = _classify_cfg(cfg)
    images, keep, skipped = load_images(df["path"], cfg.image_size)
    if len(images) == 0:
        raise UserError("no readable evaluation image (all files were skipped)")
    out = evaluate_arrays(model, images, df["label"].to_numpy()[keep], classes, cfg)
    # per image, in df's order, for the paired bootstrap over test images (core.summary)
    out["predictions"] = pd.DataFrame({"path": df["path"].to_numpy()[keep], "label": df["label"].to_numpy()[keep],
                                       "pred": out.pop("pred")})
    out["skipped"] = skipped
    return out


# --- filter classifier ----------------------------------------------------------------------

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
    from core.budget import budget_labels, write_labels
    labels, classes = budget_labels(ws, cfg)
    train_df, val_df = labels[labels.split == "train"], labels[labels.split == "val"]
    model, history = train_classifier(train_df, val_df, classes, cfg.classify, seed,
                                      progress=progress, stop=stop, stage="filter_classifier")
    if history.attrs["stopped"]:
        return {"stopped": True, "stage": "filter_classifier"}
    images, keep, _ = load_images(train_df["path"], cfg.classify.image_size)
    _, feats = predict(model, images, cfg.classify)
    cent = class_centroids(feats, train_df["label"].to_numpy()[keep], len(classes))
    present = np.bincount(train_df["label"].to_numpy()[keep], minlength=len(classes)) > 0
    best = history.attrs["best_val_balanced_accuracy"]
    info = {"backbone": cfg.classify.backbone, "classes": classes, "image_size": cfg.classify.image_size,
            "mean": list(MEAN), "std": list(STD), "num_features": int(feats.shape[1]),
            "best_step": history.attrs["best_step"], "val_balanced_accuracy": best,
            "chance": 1 / len(classes), "config_hash": config_hash(cfg.classify),
            "n_train": int(len(train_df)), "n_val": int(len(val_df)),
            "centroid_classes_present": present.tolist()}
    with atomic_dir(ws.filter_classifier_dir) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                  str(Workspace.weights_of(tmp)))
        save_file({"centroids": cent.contiguous()}, str(Workspace.centroids_of(tmp)))
        atomic_write_json(Workspace.config_of(tmp), info)
        history.to_csv(Workspace.history_of(tmp), index=False)
        write_labels(tmp, labels)
        save_config(cfg, tmp, LAB_CONFIG)
    return {"stopped": False, "classes": classes, "best_step": info["best_step"],
            "val_balanced_accuracy": best, "skipped": history.attrs["skipped"]}


