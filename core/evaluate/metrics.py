"""Classification metrics, the paired seed-level interval and the experiment summary (numpy/pandas).

Written by hand because scikit-learn and scipy are not in the stack (and the metrics are a
few lines each); every function is tested against hand-made predictions.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np



def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """counts[i, j] = how many samples of true class i were predicted as class j."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range "
                         f"[{min(t.min(), p.min())}, {max(t.max(), p.max())}]")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per true class; NaN for a class absent from y_true (it has no recall)."""
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (sklearn's definition)."""
    recall = per_class_recall(cm)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over classes present in y_true or y_pred; a class never predicted
    correctly scores 0 (sklearn's zero_division=0 convention)."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted
    present = denom > 0
    if not present.any():
        return float("nan")
    f1 = np.where(present, 2 * tp / np.where(present, denom, 1), 0.0)
    return float(f1[present].mean())


def classification_metrics(y_true, y_pred, classes: Sequence[str]) -> dict:
    """All test metrics in one dict (plain Python types, JSON-ready)."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    recall = per_class_recall(cm)
    return {
        "n": int(cm.sum()),
        "accuracy": accuracy(cm),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


# --- Student-t quantile -------------------------------------------------------------------
# scipy is not installed and torch.distributions.StudentT.icdf raises NotImplementedError
# (checked on torch 2.14), so the quantile is found by bisection on the t CDF, which is the
# regularized incomplete beta function evaluated with Lentz's continued fraction.

def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-15) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """q with P(T <= q) = p for Student's t with `df` degrees of freedom."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def paired_interval(baseline: Sequence[float], augmented: Sequence[float],
                    confidence: float = 0.95) -> dict:
    """Mean of per-seed differences (augmented - baseline) with a Student-t interval.

    Pairs share a seed (same subset, init and augmentation stream), so the seed-to-seed noise
    common to both arms cancels; with one pair there is no interval (low/high are None).
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(augmented, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_interval needs one baseline per augmented run, got {a.size} vs {b.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = b - a
    n = int(diff.size)
    out = {"n": n, "confidence": confidence, "diffs": diff.tolist(),
           "mean": float(diff.mean()) if n else None, "std": None, "low": None, "high": None}
    if n >= 2:
        sd = float(diff.std(ddof=1))
        half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        out.update(std=sd, low=out["mean"] - half, high=out["mean"] + half)
    return out


# --- power of the paired comparison over seeds -----------------------------------------------

def min_detectable_difference(sd: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean paired difference a two-sided paired t-test at level `alpha` finds
    with probability `power` over n seeds whose paired differences have SD `sd`:
    MDE = (t(1 - alpha/2, n - 1) + t(power, n - 1)) * sd / sqrt(n), the usual
    n = ((z(1 - alpha/2) + z(power)) * sd / d)^2 solved for d, with Student-t quantiles in place
    of the normal ones (1.96 + 0.84 = 2.80) because a grid has few seeds. None below 2 seeds."""
    if sd is None or n < 2 or not np.isfinite(sd):
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * float(sd) / math.sqrt(n)


def seeds_needed(sd: float | None, difference: float, alpha: float = 0.05, power: float = 0.8,
                 most: int = 10_000) -> int | None:
    """The fewest seeds whose MDE (as above, at this SD) is at most `difference`."""
    if sd is None or not np.isfinite(sd) or difference <= 0:
        return None
    n = 2
    while n < most and min_detectable_difference(sd, n, alpha, power) > difference:
        n = n + 1 if n < 100 else int(n * 1.05) + 1
    return n


# --- the paired bootstrap over test images ---------------------------------------------------

def paired_bootstrap(labels, baseline_preds, augmented_preds, num_classes: int, resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Interval for mean-over-seeds (augmented - baseline) accuracy and balanced accuracy when
    the TEST IMAGES are resampled: each resample draws the same test images for every run, so it
    shows how much the delta depends on which test images were drawn (the seed interval cannot).
    `*_preds` are (seeds, images) predicted labels in the order of `labels`."""
    y = np.asarray(labels, dtype=np.int64)
    base, aug = np.atleast_2d(np.asarray(baseline_preds)), np.atleast_2d(np.asarray(augmented_preds))
    if base.shape != aug.shape or base.shape[1] != len(y):
        raise ValueError(f"paired_bootstrap needs (seeds, {len(y)}) predictions per arm, got {base.shape} and {aug.shape}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=resamples).astype(np.float64)  # (B, N)
    onehot = np.eye(num_classes)[y]                                                                    # (N, C)
    support = counts @ onehot                                                                          # (B, C)

    def per_resample(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acc = counts @ correct.T / len(y)                                                              # (B, S)
        hits = np.einsum("bn,sn,nc->bsc", counts, correct, onehot)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = hits / support[:, None, :]
        return acc, np.nanmean(recall, axis=2)
    acc_b, bal_b = per_resample((base == y).astype(np.float64))
    acc_a, bal_a = per_resample((aug == y).astype(np.float64))
    out = {"resamples": resamples, "confidence": confidence, "n_test": int(len(y)), "seeds": int(base.shape[0])}
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    for name, d in (("accuracy", (acc_a - acc_b).mean(1)), ("balanced_accuracy", (bal_a - bal_b).mean(1))):
        out[name] = {"low": float(np.percentile(d, lo)), "high": float(np.percentile(d, hi))}
    return out


def chance_margin(num_classes: int, n_val: int) -> float:
    """How far above chance (1/C) a validation balanced accuracy must be to count as learning:
    two binomial standard errors of a chance-level score on n_val images, at least 0.05."""
    p = 1 / num_classes
    return max(0.05, 2 * math.sqrt(p * (1 - p) / max(n_val, 1)))


def at_chance(score, num_classes: int, n_val: int) -> bool:
    return score is None or not np.isfinite(score) or score <= 1 / num_classes + chance_margin(num_classes, n_val)
