"""results/summary.json and summary.md: what the grid measured, in words that are true.

Per (label budget, synthetic ratio) cell: the baseline's mean ± std per metric and, per arm, its
own mean ± std, the paired per-seed delta to the baseline with a Student-t interval, the paired
SD and the minimum detectable difference at 80% power (core.evaluate.metrics), a paired bootstrap
interval over the test images, what the arm added (realised ratio, per-class shortfall), how the
runs saw their real images (views per image, the added share, whether every arm's real batches
were its baseline's), and a status that keeps a cell from being read as a result when it is not
one. The protocol's own choices (one subset per budget, equal real exposure, the weights kept)
are stated.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.config.lab_config import LabConfig
from core.config.store import config_hash, to_dict
from core.data.budget import SUBSET_POLICY, budget_name
from core.evaluate.metrics import min_detectable_difference, paired_bootstrap, paired_interval, seeds_needed

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
POWER, ALPHA = 0.8, 0.05
DETECT = 0.02           # the difference (2 points of accuracy) a cell should be able to see
POWER_RULE = (f"minimum detectable difference (MDE) of the paired t-test at {POWER:.0%} power and "
              f"{ALPHA:.0%} two-sided: (t(0.975, n-1) + t(0.80, n-1)) * paired SD / sqrt(n), Student-t "
              "quantiles over the n seeds (the normal 1.96 + 0.84 = 2.80 understates it at few seeds)")


def _stats(values) -> dict:
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None, "runs": v}


def _flag(frame: pd.DataFrame) -> pd.Series:
    return frame["at_chance"].astype(str).str.lower().eq("true") if "at_chance" in frame \
        else pd.Series(False, index=frame.index)


def _added(arm: pd.DataFrame) -> dict:
    if arm.empty or "added_per_class" not in arm:
        return {}
    # every seed wants and finds the same counts (the draw differs, not its size): the first says it
    return json.loads(arm["added_per_class"].iloc[0])


def _shortfall(added: dict, ratio: float, topup_rounds: int) -> str | None:
    notes = []
    for part, per_class in added.items():
        short = [f"{c}: {v['drawn']} of {v['wanted']} wanted ({v.get('accepted', v.get('available'))} "
                 f"{'accepted' if 'accepted' in v else 'available'})"
                 for c, v in per_class.items() if v["drawn"] < v["wanted"]]
        if short:
            what = f"ratio {ratio:g} not met" if part == "synthetic" else f"{part}: fewer than the selected draw"
            after = f" after {topup_rounds} top-up round(s)" if part == "synthetic" else ""
            notes.append(f"{what} for {len(short)} class(es){after}: " + "; ".join(short))
    missing = {c: v for c, v in (added.get("unselected") or {}).items() if v.get("available", 0) < v.get("generated", 0)}
    if missing:
        notes.append("unselected drawn from the generated images present only: " + "; ".join(
            f"{c}: {v['available']} of {v['generated']}" for c, v in missing.items()))
    return " | ".join(notes) or None


def _bootstrap(base: pd.DataFrame, arm: pd.DataFrame, predictions, classes: list[str], cfg: LabConfig):
    if predictions is None or base.empty or arm.empty:
        return None
    pairs = base.merge(arm, on="seed", suffixes=("_b", "_a"))
    try:
        frames = [(predictions(k_b), predictions(k_a)) for k_b, k_a in zip(pairs["run_key_b"], pairs["run_key_a"])]
    except FileNotFoundError:
        return None
    labels = frames[0][0]["label"].to_numpy()
    return paired_bootstrap(labels, [b["pred"].to_numpy() for b, _ in frames],
                            [a["pred"].to_numpy() for _, a in frames], len(classes), cfg.experiment.bootstrap)


def _delta(paired: pd.DataFrame, metric: str) -> dict:
    out = paired_interval(paired[f"{metric}_b"], paired[f"{metric}_a"])
    out["mde"] = min_detectable_difference(out["std"], out["n"], ALPHA, POWER)
    out["seeds_for_2_points"] = seeds_needed(out["std"], DETECT, ALPHA, POWER)
    return out


def power_note(delta: dict) -> str | None:
    """Words for a delta whose MDE is above 2 points (or that has no MDE)."""
    if delta.get("mde") is None:
        return "fewer than 2 paired seeds: no interval, no power"
    if delta["mde"] > DETECT:
        more = f"; about {delta['seeds_for_2_points']} seeds would" if delta.get("seeds_for_2_points") else ""
        return (f"underpowered: with {delta['n']} seeds only a difference of {100 * delta['mde']:.1f} points "
                f"or more is found at {POWER:.0%} power, not 2 points{more}")
    return None


def _exposure(frame: pd.DataFrame) -> dict:
    cols = ("real_views_per_image", "added_share", "real_batch", "added_batch", "steps")
    return {c: float(frame[c].mean()) for c in cols if c in frame and frame[c].notna().any()}


def _status(base: pd.DataFrame, arm: pd.DataFrame, n_added: pd.Series) -> str:
    if len(arm) and (n_added == 0).all():
        return "no images added: the arm equals the baseline, not a result"
    if _flag(base).any() or _flag(arm).any():
        return "a classifier stayed at chance on validation: not a result"
    return "ok"


def arm_summary(base: pd.DataFrame, arm: pd.DataFrame, ratio: float, classes, cfg: LabConfig, predictions) -> dict:
    paired = base.merge(arm, on="seed", suffixes=("_b", "_a"))
    added = _added(arm)
    n_added = arm.get("n_synthetic", 0) + arm.get("n_pseudo", 0)
    same = None
    if "real_sequence_b" in paired and "real_sequence_a" in paired:
        same = bool((paired["real_sequence_b"] == paired["real_sequence_a"]).all())
    delta = {m: _delta(paired, m) for m in METRICS}
    return {"seeds": paired["seed"].tolist(), "metrics": {m: _stats(arm[m]) for m in METRICS},
            "delta": delta, "power": power_note(delta["accuracy"]),
            "bootstrap": _bootstrap(base, arm, predictions, classes, cfg),
            "per_class_recall": {c[len("recall_"):]: _stats(arm[c].dropna())["mean"]
                                 for c in arm.columns if c.startswith("recall_")},
            "n_added": _stats(n_added)["mean"] if len(arm) else None,
            "realised_ratio": float((n_added / arm["n_real"]).mean()) if len(arm) else None,
            "added_per_class": added, "shortfall": _shortfall(added, ratio, cfg.experiment.topup_rounds),
            "pseudo_label_accuracy": _stats(arm["pseudo_label_accuracy"].dropna())["mean"]
            if "pseudo_label_accuracy" in arm and arm["pseudo_label_accuracy"].notna().any() else None,
            "exposure": _exposure(arm), "real_batches_match_baseline": same,
            "status": _status(base, arm, n_added)}


def cell_summary(runs: pd.DataFrame, f: float, r: float, classes, cfg: LabConfig, predictions=None) -> dict:
    base = runs[(runs.arm == "baseline") & (runs.label_fraction == f)].sort_values("seed")
    cell = {"label_fraction": f, "synthetic_ratio": r, "budget": budget_name(f), "seeds": base["seed"].tolist(),
            "baseline": {m: _stats(base[m]) for m in METRICS},
            "baseline_recall": {c[len("recall_"):]: _stats(base[c].dropna())["mean"]
                                for c in runs.columns if c.startswith("recall_")},
            "baseline_exposure": _exposure(base),
            "n_real": int(base["n_real"].iloc[0]) if len(base) else None,
            "model_selection": str(base["model_selection"].iloc[0]) if "model_selection" in base and len(base) else None,
            "arms": {}}
    for arm in cfg.experiment.arms:
        rows = runs[(runs.arm == arm) & (runs.label_fraction == f) & (runs.synthetic_ratio == r)].sort_values("seed")
        if len(rows):
            cell["arms"][arm] = arm_summary(base, rows, r, classes, cfg, predictions)
    bad = [f"{arm}: {a['status']}" for arm, a in cell["arms"].items() if a["status"] != "ok"]
    cell["status"] = "ok" if not bad else "; ".join(bad)
    return cell


def _protocol(cfg: LabConfig) -> dict:
    c = cfg.downstream
    compute = (f"equal real exposure: every arm of a seed trains {c.steps} steps on its baseline's real batches "
               f"(batch <= {c.batch_size} real images) plus its added images at their realised ratio"
               if c.compute == "steps" else f"fixed epochs (downstream.epochs={c.epochs}): real and added images "
               "shuffled together, so arms with more images take more optimizer steps (the reference's protocol)")
    return {"compute": compute, "norm": c.norm, "augment": c.augment, "stain_jitter": c.stain_jitter,
            "model_selection": c.model_selection, "power": POWER_RULE, "arms": ["baseline", *cfg.experiment.arms],
            "labels": "an arm never sees a label its baseline does not: pseudo-labels come from the filter "
                      "classifier, trained on the budget's labels only"}


def summarize(runs: pd.DataFrame, classes: list[str], cfg: LabConfig, synthetic: dict | None = None,
              predictions=None, budgets: dict | None = None, planned: int | None = None) -> dict:
    """summary.json: every cell of the grid plus which is the main one (the first budget; ratio
    1.0 when in the grid, else the first ratio). `predictions(run_key)` -> DataFrame(label, pred)
    feeds the bootstrap; `budgets` describes each label budget; `planned` > len(runs): partial."""
    ratios = cfg.experiment.synthetic_ratios
    main_ratio = 1.0 if 1.0 in ratios else ratios[0]
    cells = [cell_summary(runs, f, r, classes, cfg, predictions)
             for f in cfg.experiment.label_fractions for r in ratios]
    planned = len(runs) if planned is None else planned
    return {"classes": classes, "main_cell": {"label_fraction": cfg.experiment.label_fractions[0],
                                              "synthetic_ratio": main_ratio},
            "grid": cells, "protocol": _protocol(cfg), "label_subsets": SUBSET_POLICY,
            "budgets": budgets or {}, "synthetic": synthetic or {}, "runs": len(runs), "runs_planned": planned,
            "status": "complete" if len(runs) >= planned else f"partial: {len(runs)} of {planned} runs",
            "config": to_dict(cfg), "config_hash": config_hash(cfg)}


def cell_arms(cell: dict) -> dict:
    """A cell's arms as summary.json holds them. A summary written before the competitor arms has
    one, "augmented" (selected synthetic images), read here as "selected" without MDE."""
    if "arms" in cell:
        return cell["arms"]
    if not cell.get("augmented"):
        return {}
    return {"selected": {"metrics": cell["augmented"], "delta": cell.get("delta") or {},
                         "bootstrap": cell.get("bootstrap"), "status": cell.get("status", "ok"),
                         "realised_ratio": cell.get("realised_ratio"), "shortfall": cell.get("shortfall"),
                         "n_added": cell.get("n_synthetic"), "power": None,
                         "per_class_recall": (cell.get("per_class_recall") or {}).get("augmented") or {}}}


def main_cell(summary: dict) -> dict:
    """The grid cell summary.json calls main."""
    want = summary.get("main_cell") or {}
    return next((c for c in summary.get("grid") or [] if c["label_fraction"] == want.get("label_fraction")
                 and c["synthetic_ratio"] == want.get("synthetic_ratio")), {})
