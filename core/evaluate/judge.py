"""The judge of synthetic images: the filter classifier's members and the real images of each class.

Every image gets, against its target class:
- `confidence`: p(target), the smallest over the ensemble's members (each member gives at least this);
- `nearest_class` / `centroid_distance`: the reference's rule, the nearest class centroid of the
  filter's L2-normalised features (cosine distance); "" when the members' nearest classes differ,
  and the distances are the largest over the members;
- `knn_ratio`: Kynkäänniemi et al.'s precision test per image: min over the class's real budget
  train images r of |f - f_r| / radius_r, radius_r being r's distance to its k-th nearest real
  neighbour of the class in the filter's feature space (Euclidean, K_NEIGHBOURS, as `prdc`); the
  image lies inside the real class's manifold when it is < 1 (largest over the members);
- `mean_r/g/b`, `pixel_std` and `colour_ok`: per-channel mean and contrast (pixel std over the
  tile, the mean of the three channels'; 0-255) inside [min, max] of the class's real budget train
  images. Flat glass has a pixel std near 0 whatever its tint.
The reference is the budget's real TRAIN images (what the filter trained on and its centroids
come from), so the real validation images can say how many real images each check passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.config.lab_config import LabConfig
from core.evaluate.inference import load_images, predict
from core.evaluate.quality_metrics import K_NEIGHBOURS, kth_neighbour_distance, pairwise
from core.workspace import Workspace

COLOUR_COLUMNS = ["mean_r", "mean_g", "mean_b", "pixel_std"]
REFERENCE_COLUMNS = ["class", "n_real", "k"] + [f"{c}_{end}" for c in COLOUR_COLUMNS for end in ("lo", "hi")]


def colour_stats(images: torch.Tensor) -> np.ndarray:
    """(N, 4): per-channel means and the pixel std (each channel's over the tile, averaged) of
    uint8 (N, 3, S, S) images, in 0-255."""
    x = images.double().flatten(2)
    return torch.cat([x.mean(2), x.std(2).mean(1, keepdim=True)], 1).numpy()


def knn_radii(features: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[np.ndarray, int]:
    """(each row's distance to its k-th nearest other row, the k used): k shrinks to n - 1 for a
    class with n <= k images; a class of one image has no radius (empty)."""
    k = min(k, len(features) - 1)
    if k < 1:
        return np.empty(0), 0
    return kth_neighbour_distance(features, k), k


def knn_ratio(query: np.ndarray, real: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """min over real rows of distance / radius: < 1 means inside some real image's k-NN ball."""
    if not len(radii):
        return np.full(len(query), np.nan)
    return (pairwise(query, real) / np.maximum(radii, 1e-12)[None, :]).min(1)


@dataclass
class ClassReference:
    features: list[np.ndarray]     # per member: (n_real, D) features of the class's real train images
    radii: list[np.ndarray]        # per member: their k-NN radii
    k: int
    colour_lo: np.ndarray          # (4,) min of COLOUR_COLUMNS over the real images
    colour_hi: np.ndarray


@dataclass
class Judge:
    members: list                  # [(model, centroids (C, D))]
    info: dict                     # the filter classifier's config.json
    reference: dict[int, ClassReference]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    def reference_table(self) -> pd.DataFrame:
        rows = []
        for label, name in enumerate(self.classes):
            ref = self.reference.get(label)
            if ref is None:
                rows.append({"class": name, "n_real": 0, "k": 0})
                continue
            row = {"class": name, "n_real": len(ref.features[0]), "k": ref.k}
            for i, col in enumerate(COLOUR_COLUMNS):
                row[f"{col}_lo"], row[f"{col}_hi"] = float(ref.colour_lo[i]), float(ref.colour_hi[i])
            rows.append(row)
        return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)

    def score(self, images: torch.Tensor, target: np.ndarray) -> dict[str, np.ndarray]:
        """Every column above for uint8 images of the given target labels."""
        n, idx, tgt = len(images), torch.arange(len(images)), torch.as_tensor(target)
        conf, probs_sum = np.full(n, np.inf), 0
        nearest, near_d, target_d, ratio = [], np.zeros(n), np.zeros(n), np.full(n, -np.inf)
        for m, (model, centroids) in enumerate(self.members):
            probs, feats = predict(model, images)
            conf = np.minimum(conf, probs[idx, tgt].numpy())
            probs_sum = probs_sum + probs
            dist = 1.0 - F.normalize(feats, dim=1) @ centroids.T
            nearest.append(dist.argmin(1).numpy())
            near_d = np.maximum(near_d, dist.min(1).values.numpy())
            target_d = np.maximum(target_d, dist[idx, tgt].numpy())
            ratio = np.maximum(ratio, self._knn(feats.numpy(), target, m))   # NaN (no radius) stays NaN
        nearest = np.stack(nearest)
        agreed = np.where((nearest == nearest[0]).all(0), nearest[0], -1)
        stats = colour_stats(images)
        return {"confidence": conf, "predicted": probs_sum.argmax(1).numpy(), "nearest": agreed,
                "nearest_distance": near_d, "centroid_distance": target_d, "knn_ratio": ratio,
                **{c: stats[:, i] for i, c in enumerate(COLOUR_COLUMNS)},
                "colour_ok": self._colour_ok(stats, target)}

    def _knn(self, feats: np.ndarray, target: np.ndarray, member: int) -> np.ndarray:
        out = np.full(len(feats), np.nan)      # a class with no radius: never inside
        for label in np.unique(target):
            ref, rows = self.reference.get(int(label)), target == label
            if ref is not None:
                out[rows] = knn_ratio(feats[rows], ref.features[member], ref.radii[member])
        return out

    def _colour_ok(self, stats: np.ndarray, target: np.ndarray) -> np.ndarray:
        ok = np.zeros(len(stats), dtype=bool)
        for label in np.unique(target):
            ref, rows = self.reference.get(int(label)), target == label
            if ref is not None:
                ok[rows] = ((stats[rows] >= ref.colour_lo) & (stats[rows] <= ref.colour_hi)).all(1)
        return ok


def load_judge(ws: Workspace, cfg: LabConfig) -> Judge:
    """The budget's filter classifier members and the reference from its real train images."""
    from core.data.budget import budget_labels
    from core.models import load_filter_members
    members, info = load_filter_members(ws)
    labels, _ = budget_labels(ws, cfg)
    train = labels[labels["split"] == "train"]
    images, keep, _ = load_images(train["path"], int(info["image_size"]))
    y = train["label"].to_numpy()[keep]
    feats = [predict(model, images)[1].numpy() for model, _ in members]
    stats = colour_stats(images)
    reference = {}
    for label in np.unique(y):
        rows = y == label
        radii = [knn_radii(f[rows]) for f in feats]
        reference[int(label)] = ClassReference(features=[f[rows] for f in feats], radii=[r for r, _ in radii],
                                               k=radii[0][1], colour_lo=stats[rows].min(0),
                                               colour_hi=stats[rows].max(0))
    return Judge(members=members, info=info, reference=reference)
