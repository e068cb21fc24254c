"""Classification metrics, the paired seed-level interval and the experiment summary (numpy/pandas).

Written by hand because scikit-learn and scipy are not in the stack (and the metrics are a
few lines each); every function is tested against hand-made predictions.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from core.config import LabConfig, config_hash, to_dict


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


# --- the experiment's summary ---------------------------------------------------------------

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _stats(values) -> dict:
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None, "runs": v}


def summarize(runs: pd.DataFrame, classes: list[str], cfg: LabConfig, synthetic: dict | None = None) -> dict:
    """summary.json: per-arm mean/std per metric and the paired per-seed delta, for the main cell
    (first label fraction; ratio 1.0 when in the grid, else the first ratio) and for every cell."""
    cells = []
    ratios = cfg.experiment.synthetic_ratios
    main_ratio = 1.0 if 1.0 in ratios else ratios[0]
    for f in cfg.experiment.label_fractions:
        base = runs[(runs.arm == "baseline") & (runs.label_fraction == f)].sort_values("seed")
        for r in ratios:
            aug = runs[(runs.arm == "augmented") & (runs.label_fraction == f)
                       & (runs.synthetic_ratio == r)].sort_values("seed")
            paired = base.merge(aug, on="seed", suffixes=("_b", "_a"))
            cell = {"label_fraction": f, "synthetic_ratio": r, "seeds": paired["seed"].tolist(),
                    "baseline": {m: _stats(base[m]) for m in METRICS},
                    "augmented": {m: _stats(aug[m]) for m in METRICS},
                    "delta": {m: paired_interval(paired[f"{m}_b"], paired[f"{m}_a"]) for m in METRICS},
                    "per_class_recall": {arm: {c[len("recall_"):]: _stats(frame[c].dropna())["mean"]
                                               for c in runs.columns if c.startswith("recall_")}
                                         for arm, frame in (("baseline", base), ("augmented", aug))},
                    "n_real": int(base["n_real"].iloc[0]) if len(base) else None,
                    "n_synthetic": _stats(aug["n_synthetic"])["mean"] if len(aug) else None}
            if len(aug) and (aug["n_synthetic"] < aug["n_synthetic_wanted"]).any():
                # too few accepted images for this ratio: said in the summary, never hidden
                cell["shortfall"] = (f"ratio {r:g} wants {int(aug['n_synthetic_wanted'].max())} synthetic "
                                     f"images, only {int(aug['n_synthetic'].min())} accepted were available")
            cells.append(cell)
    main = next((c for c in cells if c["label_fraction"] == cfg.experiment.label_fractions[0]
                 and c["synthetic_ratio"] == main_ratio), cells[0] if cells else {})
    return {"classes": classes, "main_cell": {"label_fraction": main.get("label_fraction"),
                                              "synthetic_ratio": main.get("synthetic_ratio")},
            "baseline": main.get("baseline"), "augmented": main.get("augmented"),
            "delta": main.get("delta"), "grid": cells, "synthetic": synthetic or {},
            "runs": len(runs), "config": to_dict(cfg), "config_hash": config_hash(cfg)}


def markdown_table(summary: dict) -> str:
    lines = ["| label fraction | synthetic ratio | arm | accuracy | balanced acc. | macro-F1 |",
             "|---|---|---|---|---|---|"]
    fmt = lambda s: "n/a" if not s or s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"  # noqa: E731
    for c in summary["grid"]:
        for arm in ("baseline", "augmented"):
            lines.append(f"| {c['label_fraction']:g} | {c['synthetic_ratio']:g} | {arm} | "
                         + " | ".join(fmt(c[arm][m]) for m in METRICS) + " |")
        d = c["delta"]["accuracy"]
        ci = "" if d["low"] is None else f" (95% CI {d['low']:+.3f} .. {d['high']:+.3f})"
        lines.append(f"| | | delta (paired, n={d['n']}) | "
                     f"{'n/a' if d['mean'] is None else format(d['mean'], '+.3f')}{ci} | | |")
        if c.get("shortfall"):
            lines.append(f"| | | note | {c['shortfall']} | | |")
    return "\n".join(lines) + "\n"
