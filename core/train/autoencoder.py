"""The KL autoencoder (diffusers AutoencoderKL) trained from scratch on the unlabeled pools.

L1 + KL loss as in the reference (LPIPS needs pretrained VGG weights, which do not exist
offline), optional patch discriminator, scale-by-std stored as `scaling_factor` in the saved
config, PSNR/SSIM on held-out patches. `encode`/`decode` apply the scaling so every stage
works on unit-variance latents.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.data.images import ImageDataset
from core.data.tables import load_pools
from core.data.images import stain_jitter
from core.train.latent_cache import augment
from core.models import PatchDiscriminator, build_autoencoder, decode, encode
from core.train.trainer import Trainer, TrainSpec, adamw, pool_row_weights, step_generator, step_indices
from core.workspace import Workspace

STAGE = "autoencoder"
SHAPE_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels")


def split_held_out(paths: list[str], fraction: float = 0.05, cap: int = 256) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) by a stable hash of each path, so reruns hold out the same tiles."""
    n_hold = min(cap, max(1, int(len(paths) * fraction))) if len(paths) > 1 else 0
    order = sorted(range(len(paths)), key=lambda i: hashlib.sha1(paths[i].encode()).hexdigest())
    held = sorted(order[:n_hold])
    held_set = set(held)
    return [i for i in range(len(paths)) if i not in held_set], held


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (computed on the [0, 1] range)."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window) on [0, 1]; no SSIM library is installed."""
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    window = min(window, x.shape[-1] // 2 * 2 - 1)
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(x)
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t):
        return F.conv2d(t, k, groups=x.shape[1])
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


@torch.no_grad()
def evaluate_reconstruction(vae: AutoencoderKL, images: torch.Tensor, batch: int = 32) -> dict:
    vae.eval()
    p, s = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        rec = decode(vae, encode(vae, x)).float()
        p.append(psnr(rec, x))
        s.append(ssim(rec, x))
    return {"psnr": float(torch.cat(p).mean()), "ssim": float(torch.cat(s).mean()),
            "held_out": int(len(images))}


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: torch.Tensor, batch: int = 32) -> float:
    vae.eval()
    zs = [vae.encode(images[i:i + batch]).latent_dist.mode() for i in range(0, len(images), batch)]
    return float(torch.cat(zs).float().std())


def _stack(dataset: ImageDataset, rows) -> torch.Tensor:
    return torch.stack([dataset[int(i)] for i in rows])


def train_autoencoder(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> dict:
    """Train (or resume) the autoencoder; save it with its scaling factor; return PSNR/SSIM.

    Args:
        ws (`Workspace`): the workspace (its pools.csv; checkpoints and the autoencoder folder are written).
        cfg (`LabConfig`): its autoencoder and data sections.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, training stops (checkpoint kept).

    Returns:
        `dict`: the training result with PSNR/SSIM on held-out pool images.

    Raises:
        UserError: no pools, or pools.csv lists no image.
    """
    acfg = cfg.autoencoder
    pools = load_pools(ws)
    if pools.empty:
        raise UserError(f"{ws.pools_file} lists no images")
    paths = [str(p) for p in pools["path"]]
    train_rows, held_rows = split_held_out(paths)
    weights = pool_row_weights(pools.iloc[train_rows].reset_index(drop=True))
    train_set = ImageDataset([paths[i] for i in train_rows], None, cfg.data.image_size)
    # log every 10 steps: the autoencoder section has no log_every
    trainer = Trainer(TrainSpec(
        stage=STAGE, steps=acfg.steps, seed=acfg.seed, precision=acfg.mixed_precision, schedule=acfg.lr_schedule,
        batch_size=acfg.batch_size, ckpt_dir=ws.checkpoints_dir / STAGE, checkpoint_every=acfg.checkpoint_every,
        total_limit=acfg.checkpoints_total_limit, metrics_file=ws.metrics_file(STAGE), log_every=10,
        shape=(STAGE, SHAPE_FIELDS), trackers=True, compile=acfg.compile), cfg)
    acc = trainer.acc
    torch.manual_seed(acfg.seed)
    # channels_last: fp32 CPU convs 3.1 vs 3.9 s/step at demo shapes
    vae = build_autoencoder(acfg).to(memory_format=torch.channels_last)
    opt = adamw(vae.parameters(), acfg.lr, 0.0, acc.device)
    use_disc = acfg.disc_weight > 0
    if use_disc:
        disc = PatchDiscriminator()
        disc_opt = adamw(disc.parameters(), acfg.lr, 0.0, acc.device)
        vae, opt, disc, disc_opt = trainer.prepare(vae, opt, disc, disc_opt)
    else:
        vae, opt = trainer.prepare(vae, opt)
    pixels = 3 * cfg.data.image_size ** 2

    # two compiled regions around the latent draw: its seeded generator stays outside the graph
    def encode_moments(x):          # what vae.encode builds its latent_dist from
        return vae.encode(x).latent_dist.parameters

    def decode_sample(z):
        return vae.decode(z).sample
    moments, reconstruct = trainer.compiled(encode_moments), trainer.compiled(decode_sample)

    def step_fn(step: int) -> torch.Tensor:
        vae.train()
        rows = step_indices(weights, acfg.batch_size, acfg.seed, step, 0, acc.process_index, acc.num_processes)
        # the 8 flips/rotations per image: tissue has no up, and a small pool goes 8x further
        x = augment(_stack(train_set, rows), step_generator(acfg.seed, step, 1, acc.process_index))
        x = stain_jitter(x, step_generator(acfg.seed, step, 2, acc.process_index), acfg.stain_jitter)
        x = x.to(acc.device).contiguous(memory_format=torch.channels_last)
        with acc.autocast():
            post = DiagonalGaussianDistribution(moments(x))
            rec = reconstruct(post.sample(generator=step_generator(acfg.seed, step, 0, acc.process_index)))
            # reference ratio: per-image sums of L1 and KL, divided by pixels to keep lr sensible
            loss = ((rec.float() - x).abs().flatten(1).sum(1) + acfg.kl_weight * post.kl().float()).mean() / pixels
            if use_disc and step >= acfg.disc_start:
                loss = loss - acfg.disc_weight * disc(rec).float().mean()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        if use_disc and step >= acfg.disc_start:
            with acc.autocast():
                d_loss = (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()).float()
            disc_opt.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            disc_opt.step()
        return loss

    result = trainer.run(step_fn, progress=progress, stop=stop)
    if result["stopped"]:
        trainer.end()
        return result
    model = acc.unwrap_model(vae)
    out = {"step": result["step"], "stopped": False}
    if acc.is_main_process:
        held = _stack(ImageDataset([paths[i] for i in held_rows], None, cfg.data.image_size), range(len(held_rows)))
        fit = _stack(train_set, np.linspace(0, len(train_set) - 1, min(256, len(train_set))).astype(int))
        model = model.float().to(memory_format=torch.contiguous_format)
        if acfg.save_dtype == "fp16":   # scale and metrics from the rounded weights every later stage loads
            model = model.half().float()
        model.register_to_config(scaling_factor=1.0 / max(latent_std(model, fit), 1e-6))
        out.update(evaluate_reconstruction(model, held) if held_rows else {})
        out["scaling_factor"] = float(model.config.scaling_factor)
        trainer.metrics.log({"step": result["step"], **{k: v for k, v in out.items() if k != "stopped"}})
    trainer.save(ws.autoencoder_dir, lambda tmp: (model.half() if acfg.save_dtype == "fp16" else model)
                 .save_pretrained(tmp, safe_serialization=True))
    trainer.end()
    return out


__all__ = ["train_autoencoder", "psnr", "ssim"]
