"""The pale frame at the tile border. Measures it on real tiles, autoencoder
reconstructions and generated samples, and tries two inference-only fixes:

A(p): decode a latent reflect-padded by p latent pixels, then crop the p * 4 px border;
A+B(p): also encode the image reflect-padded by 4p px and crop the latent to 16 x 16.

python -m benchmarks.frame_artefact --workspace DIR [--n 64] [--pads 1 2 4] [--png OUT.png]

Brightness is the channel mean in [-1, 1]; "d0".."d7" are mean brightness at distance d px from the
nearest tile edge minus the interior (d >= 8); "ring" is d < 4 minus interior. Not a timed test.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table
from core.models.autoencoder import factor

CLASSES = ("background", "stratum_corneum", "epidermis", "dermis")


def model_dir(models: Path, new: str, old: str) -> Path:
    """The component folder, under its current name or its legacy one (read-only: no migration)."""
    return models / new if (models / new).exists() else models / old


def load_parts(models: Path):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
    from core.models.latent_classifier import LatentClassifier
    from core.generate.pipeline import GuidedLatentPipeline
    parts = dict(vae=AutoencoderKL.from_pretrained(model_dir(models, "vae", "autoencoder")),
                 unet=UNet2DModel.from_pretrained(models / "unet"),
                 scheduler=DDPMScheduler.from_pretrained(models / "scheduler"),
                 latent_classifier=LatentClassifier.from_pretrained(model_dir(models, "latent_classifier", "classifier")))
    for m in (parts["vae"], parts["unet"], parts["latent_classifier"]):
        m.eval().requires_grad_(False)
    pipe = GuidedLatentPipeline(**parts, mixed_precision="no", sampler="ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode(vae, x: torch.Tensor, p: int = 0) -> torch.Tensor:
    """Scaled latents; p > 0: encode the image reflect-padded by p latent px and crop the latent."""
    from core.models.autoencoder import encode as enc
    if p == 0:
        return enc(vae, x)
    z = enc(vae, F.pad(x, (p * factor(vae),) * 4, mode="reflect"))
    return z[..., p:-p, p:-p]


@torch.no_grad()
def decode(vae, z: torch.Tensor, p: int = 0, mode: str = "reflect") -> torch.Tensor:
    """Pixels in [-1, 1]; p > 0: decode the latent padded by p px (`mode`) and crop p * factor px."""
    from core.models.autoencoder import decode as dec
    if p == 0:
        return dec(vae, z)
    c = p * factor(vae)
    return dec(vae, F.pad(z, (p,) * 4, mode=mode))[..., c:-c, c:-c]


def edge_distance(size: int) -> torch.Tensor:
    i = torch.arange(size)
    d = torch.minimum(i, size - 1 - i)
    return torch.minimum(d[:, None], d[None, :])


def frame(x: torch.Tensor) -> dict:
    """Brightness by distance to the edge, minus the interior (d >= 8); "|ring|" and "|step|" are
    per-image means of |ring - interior| and |d0 - (d2 + d3) / 2| (a frame of either sign)."""
    per, d = x.float().mean(1), edge_distance(x.shape[-1])          # (N, H, W) brightness
    at = lambda m: per[:, m].mean(1)                                   # noqa: E731  per-image mean over a mask
    inner, b = at(d >= 8), per.mean(0)
    row = {"interior": float(inner.mean()), "ring": float((at(d < 4) - inner).mean()),
           "|ring|": float((at(d < 4) - inner).abs().mean()),
           "|step|": float((at(d == 0) - (at(d == 2) + at(d == 3)) / 2).abs().mean())}
    row.update({f"d{k}": float(b[d == k].mean() - inner.mean()) for k in range(8)})
    row["interior dB vs plain"] = ""
    return row


def balanced_frame(x: torch.Tensor, names: list[str]) -> dict:
    """Class-balanced frame profile (mean of the per-class profiles)."""
    rows = [frame(x[[i for i, n in enumerate(names) if n == c]]) for c in CLASSES if c in names]
    return {k: sum(r[k] for r in rows) / len(rows) if isinstance(rows[0][k], float) else rows[0][k] for k in rows[0]}


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB on the [0, 1] range, over the pixels in `mask` (default all)."""
    err = ((x - y) / 2).pow(2).mean(1)
    mse = err.flatten(1).mean(1) if mask is None else err[:, mask].mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def load_test(root: Path, split: str = "test") -> tuple[torch.Tensor, list[str]]:
    from core.data.images import load_rgb, to_tensor
    df = pd.read_csv(root / "data" / "splits.csv")
    df = df[df.split == split]
    paths = [p if p.startswith("/") else str(root / p) for p in df.path]
    return torch.stack([to_tensor(load_rgb(p), 64) for p in paths]), list(df.class_name)


def reconstruction(vae, x, names, pads, batch: int = 64) -> tuple[list[dict], list[dict]]:
    variants = [("plain", 0, 0)] + [(f"A({p})", 0, p) for p in pads] + [(f"A+B({p})", p, p) for p in pads]
    d = edge_distance(x.shape[-1])
    psnr_rows, frame_rows = [], [{"set": "real test tiles", **balanced_frame(x, names)}]
    for label, pe, pd_ in variants:
        rec = torch.cat([decode(vae, encode(vae, x[i:i + batch], pe), pd_) for i in range(0, len(x), batch)])
        per = psnr(rec, x)
        row = {"decode": label, "all": float(per.mean()), "ring PSNR": float(psnr(rec, x, d < 4).mean()),
               "interior PSNR": float(psnr(rec, x, d >= 8).mean())}
        row.update({c: float(per[[i for i, n in enumerate(names) if n == c]].mean()) for c in CLASSES if c in names})
        psnr_rows.append(row)
        frame_rows.append({"set": f"recon {label}", **balanced_frame(rec, names)})
    return psnr_rows, frame_rows


def samples(pipe, n: int, scale: float, steps: int) -> tuple[torch.Tensor, list[str]]:
    names = list(pipe.latent_classifier.config.class_names)
    ids = [k % len(names) for k in range(n)]
    z = pipe(class_ids=ids, seeds=list(range(n)), guidance_scale=scale, num_inference_steps=steps,
             output_type="latent").images
    return z, [names[k] for k in ids]


def sample_rows(vae, z, names, pads, scale) -> tuple[list[dict], torch.Tensor]:
    plain = decode(vae, z)
    d = edge_distance(plain.shape[-1])
    rows = [{"set": f"samples s={scale:g} plain", **balanced_frame(plain, names)}]
    for mode in ("reflect", "replicate"):
        for p in pads:
            img = decode(vae, z, p, mode)
            # the interior should not move: PSNR of the padded decode against the plain one there
            same = float(psnr(img, plain, d >= 8).mean())
            rows.append({"set": f"samples s={scale:g} A({p}, {mode})", **balanced_frame(img, names),
                         "interior dB vs plain": same})
    return rows, plain


def grid(columns: list[torch.Tensor], path: Path, up: int = 4) -> None:
    """Rows = images, columns = variants, upscaled `up` x with nearest."""
    from core.data.images import to_pil
    tiles = torch.stack(columns, 1)                                  # (N, V, 3, H, W)
    n, v, c, h, w = tiles.shape
    pad = F.pad(tiles, (1, 1, 1, 1), value=1.0)                     # white 1 px gutters
    img = pad.permute(2, 0, 3, 1, 4).reshape(c, n * (h + 2), v * (w + 2))
    img = F.interpolate(img[None], scale_factor=up, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(img)[0].save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--n", type=int, default=64, help="samples per guidance scale")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--pads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--png", type=Path, default=Path("/tmp/frame/compare.png"))
    args = parser.parse_args()
    root = args.workspace.expanduser().resolve()
    pipe = load_parts(root / "models")
    vae = pipe.vae
    from core.models.autoencoder import EDGE_PADDING, edge_padding
    saved = edge_padding(vae)
    vae.register_to_config(**{EDGE_PADDING: [0, 0]})   # every row pads by hand; "plain" = none
    x, names = load_test(root)
    print(f"workspace {root}: {len(x)} test tiles; {torch.get_num_threads()} threads; the VAE is saved "
          f"with overlap-tile padding (encode, decode) = {saved} latent px, which the A+B rows reproduce\n")
    psnr_rows, frame_rows = reconstruction(vae, x, names, args.pads)
    print("## Reconstruction PSNR (dB), all test tiles\n")
    print(markdown_table(psnr_rows))
    for scale in args.scales:
        z, snames = samples(pipe, args.n, scale, args.steps)
        rows, plain = sample_rows(vae, z, snames, args.pads, scale)
        frame_rows += rows
        if scale == args.scales[0] and args.png:
            grid([plain[:8]] + [decode(vae, z[:8], p) for p in args.pads], args.png)
    print("\n## Frame profile: brightness minus interior (d >= 8), class-balanced\n")
    print(markdown_table(frame_rows))
    if args.png:
        print(f"\ngrid: {args.png} (rows = samples at s={args.scales[0]:g}; columns = plain, "
              + ", ".join(f"A({p})" for p in args.pads) + ")")


if __name__ == "__main__":
    main()
