"""Feature spaces for the quality numbers, offline, with features cached by file content.

A `FeatureSpace` embeds uint8 images into pooled pre-logit vectors. `feature_space(spec, ws)`:
- "" / "filter": the workspace's filter classifier (timm `forward_head(pre_logits=True)`, as
  core.evaluate.inference.predict), so the numbers live in the space the selection rule looks at;
- "timm:NAME:PATH.safetensors": any timm backbone (num_classes=0) with local weights that must
  fit it (every tensor of the backbone present with its shape; a classifier head may be extra).
Nothing is ever downloaded. Distances in these spaces are not comparable with published
Inception FIDs (see README, "Measuring synthetic images").

Features go to cache/features-KEY.safetensors keyed by each file's SHA-256, KEY naming the
weights and the input size, so a re-run only embeds images it has not seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save

from core.errors import UserError
from core.evaluate.inference import load_images
from core.io import atomic_write_bytes, file_sha256, folder_hash
from core.workspace import Workspace


@dataclass
class FeatureSpace:
    name: str                    # printed next to every number
    key: str                     # cache key: weights hash + input size
    image_size: int
    model: torch.nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 (N, D) pooled pre-logit features."""
        dev = next(self.model.parameters()).device
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
        out = []
        for lo in range(0, len(images), batch_size):
            x = (images[lo:lo + batch_size].to(dev).float() / 255.0 - mean) / std
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            out.append(f.float().flatten(1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


def feature_space(spec: str | None, ws: Workspace, image_size: int = 224) -> FeatureSpace:
    """The feature space quality is measured in: "filter" (the default: the workspace's filter
    classifier) or "timm:NAME:PATH.safetensors" (a local timm model). image_size: the input size for
    a timm space (the workspace's, so real and synthetic match).

    Args:
        spec (`str`, *optional*): "filter", "timm:NAME:PATH.safetensors"; None or empty: "filter".
        ws (`Workspace`): the workspace (its filter classifier).
        image_size (`int`, *optional*, defaults to 224): a timm space's input size.

    Returns:
        `FeatureSpace`: the model, its name, cache key, input size and normalisation.

    Raises:
        UserError: a malformed spec, or "inception" (not available offline without pickle).
    """
    spec = (spec or "filter").strip()
    if spec == "filter":
        return _filter_space(ws)
    if spec.startswith("timm:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise UserError(f"--features {spec!r}: expected timm:NAME:PATH.safetensors")
        return _timm_space(parts[1], Path(parts[2]).expanduser(), int(image_size))
    if spec.startswith("inception"):
        raise UserError("--features inception: not available offline under the no-pickle rule "
                        "(torchmetrics' Inception needs torch-fidelity, which reads its weights with "
                        "torch.load); use timm:NAME:PATH.safetensors or the default filter space")
    raise UserError(f"--features {spec!r}: expected 'filter' or timm:NAME:PATH.safetensors")


def _filter_space(ws: Workspace) -> FeatureSpace:
    from core.models import MEAN, STD, load_filter_classifier
    model, info, _ = load_filter_classifier(ws)
    size = int(info["image_size"])
    digest = folder_hash(ws.filter_classifier_dir)
    return FeatureSpace(name=f"filter classifier ({info['backbone']}, {digest}) pooled pre-logits",
                        key=f"filter-{digest}-{size}", image_size=size, model=model,
                        mean=tuple(MEAN), std=tuple(STD))


def _timm_space(name: str, path: Path, size: int) -> FeatureSpace:
    if not path.is_file():
        raise UserError(f"--features: no weights file at {path}")
    if path.suffix != ".safetensors":
        raise UserError(f"--features: {path} must be a .safetensors file (no pickle)")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise UserError(f"--features: {e}") from None
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise UserError(f"--features: cannot read {path}: {e}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        example = (missing + wrong)[0]
        raise UserError(f"--features: the weights in {path} do not fit timm backbone {name!r}: "
                        f"{len(missing)} tensor(s) missing, {len(wrong)} of another shape (e.g. {example})")
    model.load_state_dict({k: state[k] for k in own})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    cfg = model.pretrained_cfg or {}
    digest = file_sha256(path)[:12]
    return FeatureSpace(name=f"timm {name} ({path.name}, {digest}) pooled pre-logits at {size} px",
                        key=f"timm-{name}-{digest}-{size}", image_size=size, model=model,
                        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))


def _hash_bytes(hex_digests: list[str]) -> torch.Tensor:
    return torch.tensor(np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hex_digests]),
                        dtype=torch.uint8).reshape(-1, 32)


def _load_cache(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        return {}
    try:
        data = load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return {}
    return {bytes(h.tolist()).hex(): f for h, f in zip(data["sha256"], data["features"])}


def _save_cache(path: Path, cache: dict[str, torch.Tensor]) -> None:
    if cache:
        keys = list(cache)
        atomic_write_bytes(path, save({"sha256": _hash_bytes(keys),
                                       "features": torch.stack([cache[k] for k in keys]).contiguous()}))


def embed_files(space: FeatureSpace, ws: Workspace, paths, progress=None, stop=None,
                batch_size: int = 128, stage: str = "features") -> tuple[torch.Tensor, np.ndarray, dict]:
    """(features (N_ok, D), indices of the readable paths, {path: reason} for the others).

    Only files whose content hash is not in the cache are decoded and embedded. On stop the
    cache keeps what was embedded and the function returns None features.

    Args:
        space (`FeatureSpace`): the model that embeds (`feature_space`).
        ws (`Workspace`): the workspace whose feature cache (safetensors, keyed by space) is read and extended.
        paths (iterable of `str` or `Path`): the image files.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.
        batch_size (`int`, *optional*, defaults to 128): images embedded per forward pass.
        stage (`str`, *optional*, defaults to `"features"`): the stage name progress reports carry.

    Returns:
        `tuple[torch.Tensor, np.ndarray, dict]`: as above; the cache file is rewritten when images were added.
    """
    paths = [str(p) for p in paths]
    cache_path = ws.feature_cache(space.key)
    cache = _load_cache(cache_path)
    digests, skipped = [], {}
    for p in paths:
        try:
            digests.append(file_sha256(p))
        except OSError as e:
            digests.append(None)
            skipped[p] = f"{type(e).__name__}: {e}"
    todo = sorted({d for d in digests if d is not None and d not in cache})
    first = {d: p for p, d in zip(paths, digests) if d is not None}
    todo_paths = [first[d] for d in todo]
    added = 0
    for lo in range(0, len(todo_paths), batch_size):
        if stop is not None and stop.is_set():
            _save_cache(cache_path, cache)
            return None, np.array([], int), skipped
        chunk = todo_paths[lo:lo + batch_size]
        images, keep, bad = load_images(chunk, space.image_size, memo=False)
        skipped.update(bad)
        if len(keep):
            feats = space.embed(images)
            for i, f in zip(keep, feats):
                cache[todo[lo + i]] = f.clone()
            added += len(keep)
        if progress is not None:
            progress({"stage": stage, "step": lo + len(chunk), "total": len(todo_paths)})
    if added:
        _save_cache(cache_path, cache)
    ok = np.array([i for i, d in enumerate(digests) if d is not None and d in cache], dtype=int)
    for i, d in enumerate(digests):
        if d is not None and d not in cache and paths[i] not in skipped:
            skipped[paths[i]] = "unreadable image"
    dim = next(iter(cache.values())).shape[0] if cache else 0
    feats = torch.stack([cache[digests[i]] for i in ok]) if len(ok) else torch.empty(0, dim)
    return feats, ok, skipped
