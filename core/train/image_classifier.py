"""Training and testing an image classifier (a timm backbone): the grid's downstream classifiers
and the filter classifier both go through `train_image_classifier`.

Every run of the protocol grid gets the same optimizer-step budget, augmentations and seeds for
the baseline and the augmented arm; the weights kept are those of the best VALIDATION balanced
accuracy (the test split is only touched by `metrics_on_test` at the very end).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate.utils import broadcast
from torchvision.transforms import v2

from core.errors import UserError
from core.config.lab_config import ImageClassifierConfig
from core.evaluate.inference import _to_input, load_images, predict
from core.evaluate.metrics import classification_metrics
from core.models import build_backbone
from core.train.trainer import Trainer, TrainSpec


def _augmenter() -> v2.Compose:
    # Tissue has no canonical orientation: flips + 90-degree turns; light jitter for stain variation.
    rot90 = v2.RandomChoice([v2.Lambda(lambda x, k=k: torch.rot90(x, k, dims=(-2, -1))) for k in range(4)])
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), rot90,
                       v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02)])


def _augment(batch_u8: torch.Tensor, aug: v2.Compose) -> torch.Tensor:
    # v2 transforms draw one set of parameters per call, so each image gets its own call.
    return torch.stack([aug(img) for img in batch_u8])


def train_image_classifier(train_df: pd.DataFrame, val_df: pd.DataFrame, classes: list[str],
                           cfg: ImageClassifierConfig, seed: int, extra_df: pd.DataFrame | None = None,
                           progress=None, stop=None, stage: str = "downstream"):
    """Train `cfg.backbone` on train_df (+ extra_df, e.g. accepted synthetic images).

    Frames need `path` and `label`. `cfg.compute == "steps"`: exactly `cfg.steps` optimizer steps
    whatever the data size (equal compute for every arm); "epochs": `cfg.epochs` passes. The
    batch is capped at the training set's size. Validation runs `cfg.evals` times; the weights of
    the best validation balanced accuracy are returned. Returns (model, history); history.attrs
    holds best_step, best_val_balanced_accuracy, steps, batch_size, skipped files and stopped.
    """
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
    total = cfg.steps if cfg.compute == "steps" else cfg.epochs * (n // batch)
    eval_at = set(np.linspace(total / cfg.evals, total, cfg.evals).round().astype(int).tolist())
    # Kept in memory, never checkpointed: a grid run is minutes long and restarted whole. The
    # Accelerator is what lets it use several GPUs (torchrun / accelerate launch).
    trainer = Trainer(TrainSpec(stage=stage, steps=total, seed=seed, precision=cfg.mixed_precision,
                                batch_size=batch, schedule="cosine", warmup_steps=total // 10,
                                compile=cfg.compile))
    acc = trainer.acc
    model = build_backbone(cfg.backbone, len(classes), cfg.pretrained_path, getattr(cfg, "section", "downstream"))
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
                         steps=result["step"], batch_size=batch, compute=cfg.compute,
                         skipped=skipped, stopped=result["stopped"], n_train=int(n), n_val=int(len(x_val)))
    return model.eval(), history


def _validate(acc, net, x_val: torch.Tensor, y_val, classes: list[str], cfg: ImageClassifierConfig) -> tuple[float, float]:
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


def evaluate_arrays(model, images: torch.Tensor, labels, classes: list[str], cfg: ImageClassifierConfig) -> dict:
    probs, _ = predict(model, images, cfg)
    out = classification_metrics(np.asarray(labels), probs.argmax(1).numpy(), classes)
    out["pred"] = probs.argmax(1).tolist()
    return out


def metrics_on_test(model: torch.nn.Module, df: pd.DataFrame, classes: list[str], cfg: ImageClassifierConfig) -> dict:
    """Test metrics (accuracy, balanced accuracy, macro-F1, per-class recall, confusion matrix)."""
    images, keep, skipped = load_images(df["path"], cfg.image_size)
    if len(images) == 0:
        raise UserError("no readable evaluation image (all files were skipped)")
    out = evaluate_arrays(model, images, df["label"].to_numpy()[keep], classes, cfg)
    # per image, in df's order, for the paired bootstrap over test images (core.evaluate.summary)
    out["predictions"] = pd.DataFrame({"path": df["path"].to_numpy()[keep], "label": df["label"].to_numpy()[keep],
                                       "pred": out.pop("pred")})
    out["skipped"] = skipped
    return out
