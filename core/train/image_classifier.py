"""Training and testing an image classifier (a timm backbone): the grid's downstream classifiers
and the filter classifier both go through `train_image_classifier`.

A run trains on its real images and, for the arms of the grid, an added set (synthetic or
pseudo-labelled images). Every step takes the real batch the seed's real stream gives, whatever
is added (core.train.batches), so each arm of a seed sees exactly its baseline's real images in
the same order and the same augmentation; the added images ride along at their realised ratio.
BatchNorm statistics follow `norm` (core.train.normalization). The weights kept are those of the
best validation balanced accuracy, or the last step's where validation is too small to choose
(`model_selection`); the test split is only touched by `metrics_on_test` at the very end.
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

from core.config.lab_config import ImageClassifierConfig
from core.data.augment import he_augment
from core.errors import UserError
from core.evaluate.inference import _to_input, load_images, predict
from core.evaluate.metrics import classification_metrics
from core.models import build_backbone
from core.train.batches import ADDED_STREAM, plan_batches
from core.train.normalization import batch_norms, forward_parts, recompute_running_stats
from core.train.trainer import Trainer, TrainSpec

AUGMENT_STREAM = 7_919      # the augmentation's generators: apart from the batch streams'


def _light_augmenter() -> v2.Compose:
    # Tissue has no canonical orientation: flips + 90-degree turns; light jitter for stain variation.
    rot90 = v2.RandomChoice([v2.Lambda(lambda x, k=k: torch.rot90(x, k, dims=(-2, -1))) for k in range(4)])
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), rot90,
                       v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02)])


def augmenter(cfg: ImageClassifierConfig, device):
    """augment(uint8 batch, generator) -> (model input, parameters drawn per image). "light"
    draws from torch's global generator, one torchvision call per image (v2 draws one set of
    parameters per call) and reports no parameters; "he" draws from `generator`, batched."""
    if cfg.augment == "he":
        def he(batch_u8, gen):
            x, params = he_augment(batch_u8, gen, cfg.stain_jitter)
            return x.to(device).contiguous(memory_format=torch.channels_last), params
        return he
    light = _light_augmenter()
    return lambda batch_u8, gen: (_to_input(torch.stack([light(img) for img in batch_u8]), device),
                                  torch.zeros(len(batch_u8), 0))


def selection_rule(cfg: ImageClassifierConfig, y_val, num_classes: int) -> str:
    """"validation" or "last (why)": how the kept weights are chosen for this validation set."""
    if cfg.model_selection == "last":
        return "last"
    counts = np.bincount(np.asarray(y_val, dtype=np.int64), minlength=num_classes)
    if not len(y_val):
        return "last (no validation image)"
    if cfg.model_selection == "auto" and counts.min() < cfg.min_val_per_class:
        return (f"last ({int(counts.min())} validation images in a class, fewer than "
                f"min_val_per_class={cfg.min_val_per_class})")
    return "validation"


def _images(df: pd.DataFrame | None, size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    if df is None or not len(df):
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long), {}
    x, keep, skipped = load_images(df["path"], size)
    return x, torch.as_tensor(df["label"].to_numpy()[keep], dtype=torch.long), skipped


def train_image_classifier(train_df: pd.DataFrame, val_df: pd.DataFrame, classes: list[str],
                           cfg: ImageClassifierConfig, seed: int, extra_df: pd.DataFrame | None = None,
                           progress=None, stop=None, stage: str = "downstream"):
    """Train `cfg.backbone` on train_df's real images plus extra_df's added ones (synthetic or
    pseudo-labelled), on the batch plan of core.train.batches. Frames need `path` and `label`.
    Validation runs `cfg.evals` times. Returns (model, history); history.attrs holds best_step,
    best_val_balanced_accuracy, model_selection, steps, batch sizes, the real views per image, the
    added share, the real sequence's fingerprint, skipped files and stopped."""
    x_real, y_real, skipped = _images(train_df, cfg.image_size)
    x_added, y_added, more = _images(extra_df, cfg.image_size)
    x_val, y_val, vskipped = _images(val_df, cfg.image_size)
    y_val = y_val.numpy()
    skipped.update(more)
    skipped.update(vskipped)
    n = len(x_real)
    if n < 2:   # BatchNorm cannot train on a single image
        raise UserError(f"training needs at least 2 readable images, got {n} ({len(skipped)} skipped)")
    plan = plan_batches(n, len(x_added), cfg.compute, cfg.steps, cfg.epochs, cfg.batch_size, seed)
    rule = selection_rule(cfg, y_val, len(classes))
    total = plan.steps
    eval_at = set(np.linspace(total / cfg.evals, total, cfg.evals).round().astype(int).tolist())
    # Kept in memory, never checkpointed: a grid run is minutes long and restarted whole. The
    # Accelerator is what lets it use several GPUs (torchrun / accelerate launch).
    trainer = Trainer(TrainSpec(stage=stage, steps=total, seed=seed, precision=cfg.mixed_precision,
                                batch_size=plan.batch_size, schedule="cosine", warmup_steps=total // 10,
                                compile=cfg.compile))
    acc = trainer.acc
    model = build_backbone(cfg.backbone, len(classes), cfg.pretrained_path, getattr(cfg, "section", "downstream"),
                           group_norm=cfg.norm == "group")
    model = model.to(acc.device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = trainer.prepare(model, opt)
    forward = trainer.compiled(model)
    norms = batch_norms(acc.unwrap_model(model))
    split, recompute = cfg.norm in ("split", "split_recompute"), cfg.norm in ("recompute", "split_recompute")
    augment = augmenter(cfg, acc.device)
    real_gen = torch.Generator().manual_seed(seed + AUGMENT_STREAM)         # not per rank: all ranks
    added_gen = torch.Generator().manual_seed(seed + AUGMENT_STREAM + ADDED_STREAM)   # draw alike
    rows, best, best_state, best_step = [], -1.0, None, None
    window = {"loss": 0.0, "steps": 0, "t0": time.perf_counter()}
    mine = slice(acc.process_index, None, acc.num_processes)   # this rank's slice of the global batch

    def step_fn(step: int) -> torch.Tensor:
        real, added = plan.next()
        model.train()
        xr, params = augment(x_real[real], real_gen)
        plan.record(params)
        xa = augment(x_added[added], added_gen)[0][mine] if len(added) else None
        y = torch.cat([y_real[real][mine], y_added[added][mine]]).to(acc.device)
        with acc.autocast():
            logits = forward_parts(forward, norms, xr[mine], xa, split)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
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
        if recompute:
            recompute_running_stats(net, x_real, plan.real_batch)
        accuracy, balanced = _validate(acc, net, x_val, y_val, classes, cfg)
        rows.append({"step": step, "epoch": step * plan.real_batch / n if plan.compute == "steps"
                     else step * plan.real_batch / (n + len(x_added)), "train_loss": window["loss"] / window["steps"],
                     "lr": trainer.lr, "val_accuracy": accuracy, "val_balanced_accuracy": balanced,
                     "images_per_s": window["steps"] * plan.batch_size / max(time.perf_counter() - window["t0"], 1e-9)})
        window.update(loss=0.0, steps=0, t0=time.perf_counter())
        score = balanced if rule == "validation" else step
        if score > best:
            best, best_state, best_step = score, copy.deepcopy(net.state_dict()), step

    result = trainer.run(step_fn, progress=progress, stop=stop, on_step=on_step)
    trainer.end()
    model = acc.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None:
        model.load_state_dict(best_state)
    history = pd.DataFrame(rows)
    best_val = history.loc[history["step"] == best_step, "val_balanced_accuracy"] if len(history) else []
    has_val = len(x_val) > 0 and best_state is not None and len(best_val) and np.isfinite(best_val.iloc[0])
    history.attrs.update(best_step=best_step, best_val_balanced_accuracy=float(best_val.iloc[0]) if has_val else None,
                         model_selection=rule, steps=result["step"], batch_size=plan.batch_size,
                         compute=cfg.compute, norm=cfg.norm, skipped=skipped, stopped=result["stopped"],
                         n_train=int(n + len(x_added)), n_real=int(n), n_added=int(len(x_added)),
                         n_val=int(len(x_val)), **plan.report())
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
