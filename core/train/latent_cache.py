"""The latent cache: each pool encoded once into a memory-mapped .npy, keyed by (data, autoencoder).

Diffusion training then reads latents, not pixels (no VAE in the training loop). Rows hold
*scaled* latents (the same values `core.models.autoencoder.encode` returns). A file that cannot be
read is skipped and listed; `cache.kept` maps rows back to the input paths.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from core.errors import BadImage
from core.data.images import load_rgb, stain_jitter, to_tensor
from core.io import atomic_write_json
from core.models import encode
from core.workspace import Workspace


def data_fingerprint(paths: list[str], image_size: int) -> str:
    """Hash of the file list with each file's size and mtime (a changed tile changes the key)."""
    h = hashlib.sha256(str(image_size).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:16]


def model_fingerprint(vae) -> str:
    """Hash of the autoencoder's weights and latent scaling (works for saved and in-memory models)."""
    scaling = [getattr(vae.config, k, None) for k in ("shift_factor", "latents_mean", "latents_std")]
    h = hashlib.sha256(repr(float(vae.config.scaling_factor)).encode())
    if any(v is not None for v in scaling):             # the key of a plain VAE stays as it was
        h.update(repr(scaling).encode())
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class LatentCache(np.memmap):
    """np.memmap of latents (N, C, h, w) plus `kept` (row -> input index) and `skipped` (path -> reason)."""
    kept: np.ndarray
    skipped: dict


def latent_cache(ws: Workspace, vae, paths, image_size: int, batch_size: int = 64,
                 progress=None, stop=None, jitter: float = 0.0) -> LatentCache | None:
    """Scaled latents of `paths` as a read-only memmap, encoding only when no cache matches.
    `jitter` > 0: each image is encoded under its own stain jitter (core.data.images.stain_jitter),
    drawn from a hash of its path, so the cache is the same on every rerun and rank.

    Returns None only when `stop` was set mid-encoding (nothing half-written is kept).
    """
    paths = [str(p) for p in paths]
    key = f"{data_fingerprint(paths, image_size)}-{model_fingerprint(vae)}" + (f"-j{jitter:g}" if jitter else "")
    target = ws.cache_dir / f"latents-{key}.npy"
    index = target.with_suffix(".json")
    if not (target.exists() and index.exists()):
        if not _encode_to(target, index, vae, paths, image_size, batch_size, progress, stop, jitter):
            return None
    meta = json.loads(index.read_text())
    arr = np.load(target, mmap_mode="r")
    out = arr.view(LatentCache)
    out.kept = np.asarray(meta["kept"], dtype=np.int64)
    out.skipped = meta["skipped"]
    return out


@torch.no_grad()
def _encode_to(target: Path, index: Path, vae, paths, image_size, batch_size, progress, stop, jitter) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    vae.eval()
    kept: list[int] = []
    skipped: dict[str, str] = {}
    out = None
    try:
        for start in range(0, len(paths), batch_size):
            if stop is not None and stop.is_set():
                tmp.unlink(missing_ok=True)
                return False
            images, rows = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    x = to_tensor(load_rgb(paths[i]), image_size)
                    images.append(stain_jitter(x[None], _path_generator(paths[i]), jitter)[0])
                    rows.append(i)
                except (BadImage, OSError) as e:
                    skipped[paths[i]] = str(e)
            if not images:
                continue
            z = encode(vae, torch.stack(images)).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                shape=(len(paths),) + z.shape[1:])
            out[len(kept):len(kept) + len(z)] = z
            kept.extend(rows)
            if progress is not None:
                progress({"stage": "latent_cache", "step": start + len(images), "total": len(paths)})
        if out is None:
            raise BadImage(f"none of the {len(paths)} images could be read (first: {paths[:1]})")
        out.flush()
        if len(kept) < len(paths):   # drop the rows reserved for skipped files
            full = out
            out = np.lib.format.open_memmap(tmp.with_suffix(".trim"), mode="w+", dtype=np.float32,
                                            shape=(len(kept),) + full.shape[1:])
            out[:] = full[:len(kept)]
            out.flush()
            del full
            os.replace(tmp.with_suffix(".trim"), tmp)
        del out
        atomic_write_json(index, {"kept": kept, "skipped": skipped, "count": len(paths)})
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".trim").unlink(missing_ok=True)
        raise
    return True


def _path_generator(path: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(hashlib.sha1(path.encode()).hexdigest()[:12], 16))


def augment(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip / 90° rotation per sample (the 8 symmetries of a square): tissue has no up."""
    k = torch.randint(0, 8, (z.shape[0],), generator=generator)
    out = z.clone()
    for code in range(8):
        sel = (k == code).nonzero().flatten()
        if len(sel):
            v = torch.rot90(z[sel], code % 4, dims=(-2, -1))
            out[sel] = v.flip(-1) if code >= 4 else v
    return out
