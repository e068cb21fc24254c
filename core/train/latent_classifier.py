"""Training the noise-aware latent classifier p(y | z_t, t) (`core.models.LatentClassifier`), and
`python -m core latent-classifier`.

It is trained on q_sample-noised latents of the labeled TRAIN split at uniformly
drawn t, because classifier guidance queries it on noisy latents; `noise_aware=False` trains on
clean latents at t = 0 only, the reference implementation's defect, kept for comparison.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import config_hash, identity
from core.io import atomic_write_text
from core.data.budget import budget_labels, write_labels
from core.train.latent_cache import augment, latent_cache
from core.models import LatentClassifier, build_classifier, load_scheduler
from core.train.trainer import Trainer, TrainSpec, adamw, step_generator
from core.workspace import Workspace

STAGE = "latent_classifier"


def split_latents(ws: Workspace, cfg: LabConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(scaled latents N x C x h x w, labels, class names) of the label budget's train or val
    images, via the latent cache. Unreadable images are skipped by the cache (listed in its
    `skipped`); labels follow `kept`."""
    from core.models import load_autoencoder
    frame, classes = budget_labels(ws, cfg)
    rows = frame[frame["split"] == split]
    if rows.empty:
        return np.zeros((0,)), np.zeros((0,), dtype=np.int64), classes
    cache = latent_cache(ws, load_autoencoder(ws), list(rows["path"]), cfg.data.image_size)
    labels = rows["label"].to_numpy(np.int64)[cache.kept]
    return np.asarray(cache, dtype=np.float32), labels, classes


@torch.no_grad()
def accuracy_by_t(model: LatentClassifier, scheduler: DDPMScheduler, latents: torch.Tensor, labels: torch.Tensor,
                  buckets: int, batch_size: int, seed: int = 1234) -> pd.DataFrame:
    """Accuracy at each of `buckets` t-intervals; every sample is noised at one fixed t per bucket."""
    T = scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(seed)
    rows = []
    model.eval()
    device = next(model.parameters()).device
    for b in range(buckets):
        lo, hi = b * T // buckets, (b + 1) * T // buckets
        t = torch.randint(lo, hi, (len(latents),), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        correct, loss = 0, 0.0
        for i in range(0, len(latents), batch_size):
            z0, tt, y = latents[i:i + batch_size], t[i:i + batch_size], labels[i:i + batch_size]
            z = scheduler.add_noise(z0, noise[i:i + batch_size], tt)
            logits = model(z.to(device), tt.to(device)).float().cpu()
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n = max(len(latents), 1)
        rows.append({"bucket": b, "t_min": lo, "t_max": hi - 1, "accuracy": correct / n, "loss": loss / n,
                     "n": len(latents)})
    model.train()
    return pd.DataFrame(rows)


def train_latent_classifier(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> pd.DataFrame:
    """Train on the budget's train images, report per-t-bucket accuracy on its val images, save to
    ws.latent_classifier_dir with labels.csv (the exact labeled images it used).

    Resumes from checkpoints/latent_classifier when the config matches. Returns the accuracy-by-t frame
    (`frame.attrs["stopped"]` is True when `stop` interrupted it; the checkpoint is then kept).
    With latent_classifier.finetune_unet the UNet is fine-tuned first (`finetune_unet`).

    Args:
        ws (`Workspace`): the budget view (its scheduler and latent cache are read).
        cfg (`LabConfig`): its latent_classifier section.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, training stops (checkpoint kept).

    Returns:
        `pd.DataFrame`: the accuracy-by-t frame (on train images when the budget has no val image).

    Raises:
        UserError: the budget has no training image, or the scheduler is missing.
    """
    c = cfg.latent_classifier
    scheduler = load_scheduler(ws)
    train_z, train_y, classes = split_latents(ws, cfg, "train")
    if len(train_z) == 0:
        raise UserError(f"the label budget in {ws.labels_file} has no training image")
    val_z, val_y, _ = split_latents(ws, cfg, "val")
    eval_split = "val"
    if len(val_z) == 0:  # val_fraction = 0: report on train rather than touching the test split
        val_z, val_y, eval_split = train_z, train_y, "train"
    if c.finetune_unet:
        from core.train.finetune import finetune_unet
        finetune_unet(ws, cfg, train_z, progress=progress, stop=stop)
        if stop is not None and stop.is_set():
            return _stopped_frame()

    # the run key: checkpoints of another label budget, data or config are not resumed
    # (identity(): speed-only fields such as the checkpoint limit do not make another run)
    run_key = config_hash(identity(c), cfg.data, len(train_z), classes)
    trainer = Trainer(TrainSpec(
        stage=STAGE, steps=c.steps, seed=c.seed, precision=c.mixed_precision, batch_size=c.batch_size,
        ckpt_dir=ws.checkpoints_dir / STAGE, checkpoint_every=c.checkpoint_every,
        total_limit=c.checkpoints_total_limit, schedule="cosine", warmup_steps=min(100, c.steps // 10),
        metrics_file=ws.metrics_file(STAGE), log_every=c.log_every, run_key=run_key, compile=c.compile), cfg)
    acc = trainer.acc
    model = build_classifier(cfg, classes, train_z.shape[1], scheduler.config.num_train_timesteps)
    optimizer = adamw(model.parameters(), c.lr, c.weight_decay, acc.device)
    model, optimizer = trainer.prepare(model, optimizer)
    forward = trainer.compiled(model)
    z_all, y_all = torch.from_numpy(np.array(train_z)), torch.from_numpy(np.array(train_y))
    T = scheduler.config.num_train_timesteps

    def step_fn(step: int):
        gen = step_generator(c.seed, step, 0, acc.process_index)
        idx = torch.randint(0, len(z_all), (c.batch_size,), generator=gen)
        z0, y = augment(z_all[idx], gen), y_all[idx].to(acc.device)
        if c.noise_aware:
            t = torch.randint(0, T, (len(idx),), generator=gen)
            z = scheduler.add_noise(z0, torch.randn(z0.shape, generator=gen), t)
        else:  # the reference's way: clean latents, t = 0
            t, z = torch.zeros(len(idx), dtype=torch.long), z0
        with acc.autocast():
            logits = forward(z.to(acc.device), t.to(acc.device))
        loss = F.cross_entropy(logits.float(), y)
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, {"train_acc": float((logits.argmax(1) == y).float().mean())}

    result = trainer.run(step_fn, progress=progress, stop=stop)
    net = acc.unwrap_model(model).float()
    table = accuracy_by_t(net, scheduler, torch.from_numpy(np.array(val_z)), torch.from_numpy(np.array(val_y)),
                          c.t_buckets, batch_size=max(c.batch_size, 64))
    table["split"], table["noise_aware"], table["step"] = eval_split, c.noise_aware, result["step"]
    trainer.metrics.log({"step": result["step"], "eval_split": eval_split,
                         "accuracy_by_t": table["accuracy"].round(4).tolist()})
    if not result["stopped"]:
        def write(tmp):
            net.save_pretrained(tmp)
            atomic_write_text(Workspace.accuracy_by_t_of(tmp), table.to_csv(index=False))
            write_labels(tmp, budget_labels(ws, cfg)[0], ws)
        trainer.save(ws.latent_classifier_dir, write)
    trainer.end()
    table.attrs["stopped"] = result["stopped"]
    return table


def _stopped_frame() -> pd.DataFrame:
    frame = pd.DataFrame(columns=["bucket", "t_min", "t_max", "accuracy", "loss", "n"])
    frame.attrs["stopped"] = True
    return frame
