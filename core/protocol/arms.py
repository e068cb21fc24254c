"""What each arm of the grid adds to its baseline's real images, drawn per (budget, ratio, seed).

- "selected": accepted synthetic images, round(ratio * n_c) per class c (core.protocol.topup).
- "unselected": per class as many synthetic images as "selected" drew, at random from everything
  generated for the budget, accepted or not: what selection adds over generating alone.
- "pseudo": per class as many real images of the labeled pool outside the budget (their labels
  hidden; never test images) that the budget's filter classifier labels confidently, under the
  label it predicts: what generating adds over pseudo-labelling the tissue one already has.
- "selected+pseudo": both sets.

An arm never sees a label its baseline does not: the filter classifier trained on the budget's
labels only, and the hidden labels are read solely to report how often the pseudo-labels are right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.config.lab_config import LabConfig
from core.protocol.topup import accepted_images, draw_synthetic, threshold_of
from core.workspace import Workspace

PARTS = {"selected": ("synthetic",), "unselected": ("unselected",), "pseudo": ("pseudo",),
         "selected+pseudo": ("synthetic", "pseudo")}
COLUMNS = ["path", "label", "source"]


@dataclass
class BudgetPools:
    """A budget's images the arms draw from, read once per grid."""
    accepted: pd.DataFrame          # path, label: selected synthetic images
    generated: pd.DataFrame         # path, label, present: every synthetic image the config made
    pseudo: pd.DataFrame            # path, label (predicted), confidence, hidden_label
    pseudo_info: dict


def unlabeled_pool(splits: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The labeled pool's images outside the budget's subset (train and val parts; never test)."""
    pool = splits[splits["split"].isin(("train", "val"))]
    return pool[~pool["path"].isin(set(labels["path"]))].reset_index(drop=True)


def generated_images(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """Every synthetic image the config made for the budget (accepted or not), with whether its
    file is here: an installed demo bundle carries only the accepted images of later budgets."""
    from core.evaluate.selection import current_selection, synthetic_path
    rows = current_selection(ws, cfg)
    if "error" in rows:
        rows = rows[rows["error"].fillna("").astype(str) == ""]

    def where(file, cls):
        src = synthetic_path(ws, file)
        copy = ws.accepted_dir / str(cls) / src.name
        return src if src.exists() or not copy.exists() else copy
    paths = [where(f, c) for f, c in zip(rows["file"], rows["class"])]
    return pd.DataFrame({"path": [str(p) for p in paths], "label": rows["label"].astype(int).to_numpy(),
                         "present": [p.exists() for p in paths]})


def class_bars(ws: Workspace, cfg: LabConfig) -> dict[int, float]:
    """The confidence each class's synthetic images were held to (calibrated or global): the same
    bar decides which pseudo-labels count as confident."""
    from core.evaluate.selection import current_selection
    kept = current_selection(ws, cfg)
    out = {}
    for label, rows in kept.groupby(kept["label"].astype(int)):
        bar = threshold_of(rows)
        out[int(label)] = cfg.selection.threshold if bar is None else bar
    return out


def pseudo_labelled(ws: Workspace, cfg: LabConfig, pool: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, dict]:
    """The pool's images the budget's filter classifier labels at or above its class's bar:
    (path, label = the predicted class, confidence, hidden_label), and a report per class."""
    from core.evaluate.inference import load_images, predict
    from core.models.load import load_filter_classifier
    empty = pd.DataFrame(columns=["path", "label", "confidence", "hidden_label"])
    if pool.empty:
        return empty, {"pool": 0, "confident": 0, "per_class": {}}
    model, info, _ = load_filter_classifier(ws)
    images, keep, _ = load_images(pool["path"], int(info["image_size"]))
    probs, _ = predict(model, images, cfg.filter_classifier)
    conf, pred = probs.max(1)
    bars = class_bars(ws, cfg)
    bar = np.array([bars.get(int(k), cfg.selection.threshold) for k in pred.tolist()])
    frame = pd.DataFrame({"path": pool["path"].to_numpy()[keep], "label": pred.numpy().astype(int),
                          "confidence": conf.numpy(), "hidden_label": pool["label"].to_numpy()[keep].astype(int)})
    frame = frame[frame["confidence"].to_numpy() >= bar].reset_index(drop=True)
    per_class = {classes[k]: {"confident": int((frame["label"] == k).sum()),
                              "correct": int(((frame["label"] == k) & (frame["hidden_label"] == k)).sum())}
                 for k in range(len(classes))}
    return frame, {"pool": int(len(pool)), "confident": int(len(frame)),
                   "correct": int((frame["label"] == frame["hidden_label"]).sum()), "per_class": per_class}


def budget_pools(ws: Workspace, cfg: LabConfig, labels: pd.DataFrame, splits: pd.DataFrame,
                 classes: list[str]) -> BudgetPools:
    needs = {part for arm in cfg.experiment.arms for part in PARTS[arm]}
    generated = generated_images(ws, cfg) if "unselected" in needs else pd.DataFrame(columns=["path", "label", "present"])
    pseudo, info = pseudo_labelled(ws, cfg, unlabeled_pool(splits, labels), classes) if "pseudo" in needs \
        else (pd.DataFrame(columns=["path", "label", "confidence", "hidden_label"]), {})
    return BudgetPools(accepted_images(ws, cfg), generated, pseudo, info)


def _same_counts(pool: pd.DataFrame, counts: dict[int, int], seed: int, stream: int) -> tuple[pd.DataFrame, dict]:
    parts, report = [], {}
    for label, want in counts.items():
        rows = pool[pool["label"] == label]
        k = min(len(rows), want)
        report[label] = {"wanted": want, "drawn": k, "available": int(len(rows))}
        if k:
            parts.append(rows.sample(n=k, random_state=np.random.default_rng([seed, label, stream])))
    return (pd.concat(parts) if parts else pool.iloc[:0]), report


def draw_arm(arm: str, pools: BudgetPools, real: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """(the images `arm` adds: path, label, source; per part, per class label {wanted, drawn, ...}).
    The counts per class are those the selected draw realised, so arms differ in what they add,
    not in how much."""
    selected, report = draw_synthetic(pools.accepted, real, ratio, seed)
    counts = {label: r["drawn"] for label, r in report.items()}
    out, reports = [], {}
    for part in PARTS[arm]:
        if part == "synthetic":
            frame, rep = selected, report
        elif part == "unselected":
            frame, rep = _same_counts(pools.generated[pools.generated["present"]], counts, seed, 1)
            for label, r in rep.items():
                r["generated"] = int((pools.generated["label"] == label).sum())
        else:
            frame, rep = _same_counts(pools.pseudo, counts, seed, 2)
            for label, r in rep.items():     # hidden labels: reported, never trained on
                rows = frame[frame["label"] == label]
                r["correct"] = int((rows["hidden_label"] == label).sum())
        out.append(frame[["path", "label"]].assign(source=part))
        reports[part] = rep
    return pd.concat(out, ignore_index=True)[COLUMNS], reports
