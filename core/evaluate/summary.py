"""results/summary.json and summary.md: what the grid measured, in words that are true.

Per (label budget, synthetic ratio) cell: each arm's mean ± std per metric, the paired per-seed
delta with a Student-t interval, a paired bootstrap interval over the test images, the synthetic
ratio actually delivered and any per-class shortfall, and a status that keeps a cell from being
read as a result when it is not one (no synthetic image was added, or a classifier stayed at
chance). The protocol's own choices (one subset per budget, equal optimizer steps) are stated.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.data.budget import SUBSET_POLICY
from core.config.lab_config import LabConfig
from core.config.store import config_hash, to_dict
from core.evaluate.metrics import paired_bootstrap, paired_interval

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _stats(values) -> dict:
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None, "runs": v}


def _flag(frame: pd.DataFrame) -> pd.Series:
    return frame["at_chance"].astype(str).str.lower().eq("true") if "at_chance" in frame \
        else pd.Series(False, index=frame.index)


def _per_class(aug: pd.DataFrame) -> dict:
    if aug.empty or "synthetic_per_class" not in aug:
        return {}
    # every seed wants and finds the same counts (the draw differs, not its size): the first says it
    return json.loads(aug["synthetic_per_class"].iloc[0])


def _shortfall(per_class: dict, ratio: float, topup_rounds: int) -> str | None:
    short = [f"{c}: {v['drawn']} of {v['wanted']} wanted ({v['accepted']} accepted)"
             for c, v in per_class.items() if v["drawn"] < v["wanted"]]
    if not short:
        return None
    return (f"ratio {ratio:g} not met for {len(short)} class(es) after {topup_rounds} top-up round(s): "
            + "; ".join(short))


def _bootstrap(base: pd.DataFrame, aug: pd.DataFrame, predictions, classes: list[str], cfg: LabConfig):
    if predictions is None or base.empty or aug.empty:
        return None
    pairs = base.merge(aug, on="seed", suffixes=("_b", "_a"))
    try:
        frames = [(predictions(k_b), predictions(k_a)) for k_b, k_a in zip(pairs["run_key_b"], pairs["run_key_a"])]
    except FileNotFoundError:
        return None
    labels = frames[0][0]["label"].to_numpy()
    return paired_bootstrap(labels, [b["pred"].to_numpy() for b, _ in frames],
                            [a["pred"].to_numpy() for _, a in frames], len(classes),
                            cfg.experiment.bootstrap)


def cell_summary(runs: pd.DataFrame, f: float, r: float, classes, cfg: LabConfig, predictions=None) -> dict:
    base = runs[(runs.arm == "baseline") & (runs.label_fraction == f)].sort_values("seed")
    aug = runs[(runs.arm == "augmented") & (runs.label_fraction == f) & (runs.synthetic_ratio == r)].sort_values("seed")
    paired = base.merge(aug, on="seed", suffixes=("_b", "_a"))
    per_class = _per_class(aug)
    cell = {"label_fraction": f, "synthetic_ratio": r, "seeds": paired["seed"].tolist(),
            "baseline": {m: _stats(base[m]) for m in METRICS},
            "augmented": {m: _stats(aug[m]) for m in METRICS},
            "delta": {m: paired_interval(paired[f"{m}_b"], paired[f"{m}_a"]) for m in METRICS},
            "bootstrap": _bootstrap(base, aug, predictions, classes, cfg),
            "per_class_recall": {arm: {c[len("recall_"):]: _stats(frame[c].dropna())["mean"]
                                       for c in runs.columns if c.startswith("recall_")}
                                 for arm, frame in (("baseline", base), ("augmented", aug))},
            "n_real": int(base["n_real"].iloc[0]) if len(base) else None,
            "n_synthetic": _stats(aug["n_synthetic"])["mean"] if len(aug) else None,
            "realised_ratio": float((aug["n_synthetic"] / aug["n_real"]).mean()) if len(aug) else None,
            "synthetic_per_class": per_class,
            "optimizer_steps": {arm: _stats(frame["steps"])["mean"] if "steps" in frame and len(frame) else None
                                for arm, frame in (("baseline", base), ("augmented", aug))},
            "shortfall": _shortfall(per_class, r, cfg.experiment.topup_rounds)}
    if len(aug) and (aug["n_synthetic"] == 0).all():
        cell["status"] = "no synthetic images: the augmented arm equals the baseline, not a result"
    elif _flag(base).any() or _flag(aug).any():
        cell["status"] = "a classifier stayed at chance on validation: not a result"
    else:
        cell["status"] = "ok"
    return cell


def summarize(runs: pd.DataFrame, classes: list[str], cfg: LabConfig, synthetic: dict | None = None,
              predictions=None, budgets: dict | None = None, planned: int | None = None) -> dict:
    """summary.json: every cell of the grid plus the main one (the first budget; ratio 1.0 when in
    the grid, else the first ratio). `predictions(run_key)` -> DataFrame(label, pred) feeds the
    bootstrap; `budgets` describes each label budget; `planned` < len(runs) marks it partial."""
    ratios = cfg.experiment.synthetic_ratios
    main_ratio = 1.0 if 1.0 in ratios else ratios[0]
    cells = [cell_summary(runs, f, r, classes, cfg, predictions)
             for f in cfg.experiment.label_fractions for r in ratios]
    main = next((c for c in cells if c["label_fraction"] == cfg.experiment.label_fractions[0]
                 and c["synthetic_ratio"] == main_ratio), cells[0] if cells else {})
    c = cfg.downstream
    compute = (f"equal optimizer steps for every arm (downstream.steps={c.steps}, batch <= {c.batch_size})"
               if c.compute == "steps" else f"fixed epochs (downstream.epochs={c.epochs}): arms with more "
               "images take more optimizer steps")
    planned = len(runs) if planned is None else planned
    return {"classes": classes, "main_cell": {"label_fraction": main.get("label_fraction"),
                                              "synthetic_ratio": main.get("synthetic_ratio")},
            "baseline": main.get("baseline"), "augmented": main.get("augmented"),
            "delta": main.get("delta"), "bootstrap": main.get("bootstrap"), "grid": cells,
            "label_subsets": SUBSET_POLICY, "compute": compute, "budgets": budgets or {},
            "synthetic": synthetic or {}, "runs": len(runs), "runs_planned": planned,
            "status": "complete" if len(runs) >= planned else f"partial: {len(runs)} of {planned} runs",
            "config": to_dict(cfg), "config_hash": config_hash(cfg)}


def _interval(d: dict | None, boot: dict | None, metric: str) -> str:
    if d is None or d["mean"] is None:
        return "n/a"
    out = format(d["mean"], "+.3f")
    if d["low"] is not None:
        out += f" (seeds {d['low']:+.3f} .. {d['high']:+.3f}"
        out += f"; test images {boot[metric]['low']:+.3f} .. {boot[metric]['high']:+.3f})" if boot else ")"
    return out


def markdown_table(summary: dict) -> str:
    lines = []
    if summary.get("status", "complete") != "complete":
        lines.append(f"**{summary['status']}** (the grid is still running or was stopped)\n")
    lines += ["| label budget | synthetic ratio (realised) | arm | accuracy | balanced acc. | macro-F1 |",
              "|---|---|---|---|---|---|"]
    fmt = lambda s: "n/a" if not s or s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"  # noqa: E731
    for c in summary["grid"]:
        real = "" if c.get("realised_ratio") is None else f" ({c['realised_ratio']:.2f})"
        for arm in ("baseline", "augmented"):
            lines.append(f"| {c['label_fraction']:g} | {c['synthetic_ratio']:g}{real} | {arm} | "
                         + " | ".join(fmt(c[arm][m]) for m in METRICS) + " |")
        boot = c.get("bootstrap")
        lines.append(f"| | | delta (paired, n={c['delta']['accuracy']['n']}, 95% CI) | "
                     f"{_interval(c['delta']['accuracy'], boot, 'accuracy')} | "
                     f"{_interval(c['delta']['balanced_accuracy'], boot, 'balanced_accuracy')} | |")
        if c.get("status", "ok") != "ok":
            lines.append(f"| | | status | {c['status']} | | |")
        if c.get("shortfall"):
            lines.append(f"| | | shortfall | {c['shortfall']} | | |")
    lines.append("")
    lines.append(f"Labels: {summary.get('label_subsets', '')}. Compute: {summary.get('compute', '')}.")
    for name, q in (summary.get("quality") or {}).items():
        if q.get("error") or not q.get("per_class"):
            lines.append(f"Quality, budget {name}: {q.get('error') or 'no accepted synthetic image to measure'}.")
            continue
        lines.append(f"Quality of the accepted images, budget {name} ({q['features']}; real-vs-real floor in brackets):")
        for c, m in q["per_class"].items():
            f = m["floor"]
            fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
            lines.append(f"- {c} (n={m['n']}): FD {fmt(m['fd'])} ({fmt(f.get('fd'))}), coverage "
                         f"{fmt(m['coverage'])} ({fmt(f.get('coverage'))}), copy rate {fmt(m['copy_rate'])} "
                         f"({fmt(f.get('copy_rate'))})")
    lines += _selection_lines(summary.get("synthetic") or {})
    for name, b in (summary.get("budgets") or {}).items():
        cal = b.get("calibration")
        if cal:
            lines.append(f"Budget {name}: per-class thresholds calibrated on {cal['n_val_images']} validation "
                         f"images (q{cal['quantile']:g} of each class's real validation confidences): "
                         + "; ".join(f"{c} {v['threshold']:.3f} ({v['rule']})" for c, v in cal["per_class"].items()))
        if b.get("filter_at_chance"):
            lines.append(f"Budget {name}: the filter classifier stayed at chance on validation "
                         f"(balanced accuracy {b.get('filter_val_balanced_accuracy')}); its selection is not meaningful.")
    return "\n".join(lines) + "\n"


SELECTION_CHECKS = (("confidence", "confidence"), ("centroid", "centroid"), ("knn", "k-NN realism"),
                    ("colour", "colour range"), ("kept", "kept by the rule"))


def _selection_lines(synthetic: dict) -> list[str]:
    """Per budget and class, the synthetic images passing each check (and, in brackets, the real
    validation images passing it: a check that real images fail says so)."""
    rule = synthetic.get("rule") or {}
    realism = "+".join(rule.get("realism") or ()) or "none"
    lines = []
    for name, per_class in (synthetic.get("checks") or {}).items():
        lines += ["", f"Selection, budget {name} (rule: {rule.get('strategy', '?')}, realism checks: {realism}; "
                      "synthetic images passing each check, real validation images in brackets):", "",
                  "| class | generated | " + " | ".join(t for _, t in SELECTION_CHECKS) + " |",
                  "|---|---|" + "---|" * len(SELECTION_CHECKS)]
        for c, n in per_class.items():
            cells = [f"{n[k]} ({n['val_' + k]}/{n['val_images']})" if "val_images" in n else str(n[k])
                     for k, _ in SELECTION_CHECKS]
            lines.append(f"| {c} | {n['images']} | " + " | ".join(cells) + " |")
    return lines + ([""] if lines else [])
