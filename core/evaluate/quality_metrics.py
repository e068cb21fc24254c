"""Set-to-set image quality numbers on feature vectors: FD, KID, precision/recall/density/coverage,
diversity and nearest-neighbour memorisation. Pure functions of (N, D) tensors; the feature space
and the real-vs-real floor are core.evaluate.quality's business.

FD and KID are torchmetrics' (FrechetInceptionDistance / KernelInceptionDistance) fed with
precomputed features through an identity "feature module", so the matrix square root and the
polynomial-kernel MMD are the library's, not ours. PRDC follows the `prdc` reference
implementation (Naeem et al. 2020): Euclidean k-NN radii in the real set, strict `<`.
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

K_NEIGHBOURS = 5            # prdc's and Naeem et al.'s recommended k
COPY_PERCENTILE = 5.0       # a synthetic image is a likely copy when it is closer to a real image
                            # than 95% of real images are to their own nearest real neighbour
KID_SUBSETS = 100


class _Precomputed(torch.nn.Module):
    """torchmetrics calls `feature(imgs)`; our 'images' are already feature vectors."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def frechet_distance(real, fake) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (needs >= 2 rows each)."""
    real, fake = _span_coordinates(_f64(real), _f64(fake))
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1])).double()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(float(metric.compute()), 0.0)   # eigvals round-off can give -1e-12


def _span_coordinates(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets in an orthonormal basis of the span of their centred rows and mean difference.

    FD is unchanged by this (both covariances and the mean difference live in that span, so the
    traces and the non-zero eigenvalues of sigma1 @ sigma2 are the same), but with fewer images
    than feature dimensions torchmetrics' eigvals works on (n1 + n2 - 1)^2 instead of D^2:
    1024-d features of 100 + 100 images took 5 s a pair on 2 cores, about 0.1 s this way."""
    ma, mb = a.mean(0), b.mean(0)
    basis = torch.cat([a - ma, b - mb, (ma - mb)[None]])
    if len(basis) >= a.shape[1]:
        return a, b
    u, sv, vh = torch.linalg.svd(basis, full_matrices=False)
    q = vh[sv > sv.max() * 1e-10].T if len(sv) and sv.max() > 0 else vh[:1].T
    return a @ q, b @ q


def kernel_distance(real, fake, subset_size: int | None = None, seed: int = 0) -> float:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, mean over KID_SUBSETS random subsets
    of min(1000, sizes) rows (torchmetrics' defaults; seeded here so re-runs agree)."""
    # float32: the 100 subsets' kernel matrices dominate an evaluation's time in float64
    real, fake = _f64(real).float(), _f64(fake).float()
    size = subset_size or min(1000, len(real), len(fake))
    metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=KID_SUBSETS,
                                     subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)


def pairwise(a, b) -> np.ndarray:
    return torch.cdist(_f64(a), _f64(b)).numpy()


def kth_neighbour_distance(x, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (column 0 of the sorted row is itself)."""
    d = pairwise(x, x)
    return np.partition(d, k, axis=1)[:, k]


def prdc(real, fake, k: int = K_NEIGHBOURS) -> dict[str, float]:
    """Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall need more than k={k} images per set "
                         f"(got {len(real)} real, {len(fake)} synthetic)")
    real_r = kth_neighbour_distance(real, k)
    fake_r = kth_neighbour_distance(fake, k)
    d = pairwise(real, fake)                                   # (real, fake)
    inside = d < real_r[:, None]
    return {"precision": float(inside.any(axis=0).mean()),
            "recall": float((d < fake_r[None, :]).any(axis=1).mean()),
            "density": float(inside.sum(axis=0).mean() / k),
            "coverage": float((d.min(axis=1) < real_r).mean())}


def diversity(x) -> float:
    """Mean pairwise Euclidean distance within one set."""
    x = _f64(x)
    return float(torch.pdist(x).mean()) if len(x) > 1 else float("nan")


def nearest(query, reference, chunk: int = 2048, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query row's nearest reference row, in chunks (pools can be large).
    exclude_self: query IS reference, so each row's own zero distance is skipped."""
    q, r = _f64(query), _f64(reference)
    dist, idx = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for lo in range(0, len(q), chunk):
        d = torch.cdist(q[lo:lo + chunk], r)
        if exclude_self:
            rows = torch.arange(lo, min(lo + chunk, len(q)))
            d[rows - lo, rows] = float("inf")
        m = d.min(dim=1)
        dist[lo:lo + chunk], idx[lo:lo + chunk] = m.values.numpy(), m.indices.numpy()
    return dist, idx


def copy_threshold(reference_nn: np.ndarray, percentile: float = COPY_PERCENTILE) -> float:
    return float(np.percentile(reference_nn, percentile))


def memorisation(query_nn: np.ndarray, reference_nn: np.ndarray,
                 percentile: float = COPY_PERCENTILE) -> dict[str, float]:
    """From each query image's distance to its nearest real image and the real set's own
    nearest-neighbour distances: the median ratio of the two, and the copy rate (share of query
    images at or under the real set's `percentile`-th nearest-neighbour distance; `<=`, so exact
    copies count even where the real set holds duplicates)."""
    scale = float(np.median(reference_nn))
    threshold = copy_threshold(reference_nn, percentile)
    return {"nn_ratio": float(np.median(query_nn) / scale) if scale > 0 else float("nan"),
            "copy_rate": float((query_nn <= threshold).mean()) if len(query_nn) else float("nan")}


def ratios(query_nn: np.ndarray, reference_nn: np.ndarray) -> np.ndarray:
    """Per-image distance ratio (nearest real / median real-to-real nearest distance)."""
    scale = float(np.median(reference_nn))
    return query_nn / scale if scale > 0 else np.full(len(query_nn), np.nan)
