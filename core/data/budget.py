"""The label budget: which labeled images a run, and every model behind it, may use.

One budget is one value of `experiment.label_fractions`: a fraction of the labeled pool (<= 1) or
a whole number of images per class (> 1). Its subset is drawn once, per class and separately from
the pool's train and validation parts (so validation stays the same share of the budget and, for
the demo, spatially apart), with `data.seed`; the same seed gives nested subsets across budgets.
The latent classifier, the filter classifier and its centroids, the baseline and the augmented
runs of that budget all read their labels here and write the exact set they used as labels.csv.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.io import atomic_write_text
from core.workspace import Workspace

LABEL_COLUMNS = ["path", "label", "class_name", "split"]
# One subset per budget, shared by every seed of the grid: seeds vary initialisation, batch order
# and augmentation, not which images are labeled (said in summary.json as `label_subsets`).
SUBSET_POLICY = "one labeled subset per budget (drawn with data.seed), shared by all seeds"


def budget_name(value: float) -> str:
    """Folder name of a budget: f0.25 for a fraction, n20 for 20 images per class.

    Args:
        value (`float`): a fraction (<= 1) or a count of images per class (> 1).

    Returns:
        `str`: "f" + the fraction, or "n" + the count.
    """
    return f"f{value:g}" if value <= 1 else f"n{int(value)}"


def budget_views(ws: Workspace, cfg: LabConfig) -> list[tuple[float, Workspace]]:
    """(budget value, its workspace view) for every budget; the first one lives at the root.

    Args:
        ws (`Workspace`): the workspace.
        cfg (`LabConfig`): its `experiment.label_fractions` are the budgets.

    Returns:
        `list[tuple[float, Workspace]]`: one pair per budget, in the config's order.
    """
    values = cfg.experiment.label_fractions
    return [(v, ws.for_budget(budget_name(v), primary=i == 0)) for i, v in enumerate(values)]


def budget_of(ws: Workspace, cfg: LabConfig) -> float:
    """The budget a workspace view trains on: its scope's, or the config's first at the root."""
    if not ws.scope:
        return cfg.experiment.label_fractions[0]
    for v in cfg.experiment.label_fractions:
        if budget_name(v) == ws.scope:
            return v
    raise UserError(f"budget {ws.scope!r} is not in experiment.label_fractions "
                    f"{list(cfg.experiment.label_fractions)}")


def _take(group: pd.DataFrame, k: int, seed: int, offset: int, part: int) -> pd.DataFrame:
    # a fixed permutation per (seed, class, part): a larger budget extends a smaller one's prefix
    ordered = group.sort_values("path")
    rng = np.random.default_rng([seed, offset, part, len(ordered)])
    return ordered.iloc[np.sort(rng.permutation(len(ordered))[:k])]


def draw_labels(splits: pd.DataFrame, classes: list[str], value: float, seed: int) -> pd.DataFrame:
    """The budget's labeled subset (path, label, class_name, split in train|val), or a UserError
    naming the class when the budget leaves it fewer than 2 images or no training image.

    Args:
        splits (`pd.DataFrame`): splits.csv (its train and val rows are the pool drawn from).
        classes (`list[str]`): the ordered class names.
        value (`float`): a fraction of each class's train and val images (<= 1), or a count per class split
            between train and val in the pool's proportion (> 1).
        seed (`int`): the draw's seed.

    Returns:
        `pd.DataFrame`: the drawn rows.

    Raises:
        UserError: a class with no usable labeled image, fewer than 2 classes, or a class the budget leaves
            short.
    """
    pool = splits[splits["split"].isin(("train", "val"))]
    labeled = set(pool["class_name"])
    missing = [c for c in classes if c not in labeled]
    if missing:
        raise UserError(f"class(es) {', '.join(missing)} have test images but no usable labeled image "
                        "(all their training files were skipped or absent)")
    if len(labeled) < 2:
        raise UserError(f"the labeled set has {len(labeled)} usable class(es) ({', '.join(sorted(labeled)) or 'none'}); "
                        "a classifier needs at least 2")
    parts, problems = [], []
    for offset, name in enumerate(classes):
        group = pool[pool["class_name"] == name]
        train, val = group[group["split"] == "train"], group[group["split"] == "val"]
        if value <= 1:
            k_train, k_val = int(round(len(train) * value)), int(round(len(val) * value))
        else:   # a count per class, split between train and val in the pool's own proportion
            n = min(int(value), len(group))
            k_val = int(round(n * len(val) / len(group)))
            k_train = n - k_val
        if k_train < 1 or k_train + k_val < 2:
            problems.append(f"{name}: {k_train + k_val} of {len(group)} ({k_train} to train)")
            continue
        parts += [_take(train, k_train, seed, offset, 0), _take(val, k_val, seed, offset, 1)]
    if problems:
        what = f"label fraction {value:g}" if value <= 1 else f"{int(value)} labels per class"
        raise UserError(f"{what} leaves too few labeled images (need at least 2 per class, 1 of them "
                        f"to train): {'; '.join(problems)} — raise the budget")
    return pd.concat(parts)[LABEL_COLUMNS].reset_index(drop=True)


def budget_labels(ws: Workspace, cfg: LabConfig) -> tuple[pd.DataFrame, list[str]]:
    """This view's labeled subset and the class names; written to ws.labels_file when it changed.

    Args:
        ws (`Workspace`): the budget's workspace view (`budget_views`).
        cfg (`LabConfig`): its `data.seed` draws the subset.

    Returns:
        `tuple[pd.DataFrame, list[str]]`: the labeled subset (`draw_labels`) and the ordered class names.
        Writes ws.labels_file (labels.csv) only when its text differs.

    Raises:
        UserError: no labeled data in the workspace, or a class the budget leaves short (`draw_labels`).
    """
    from core.data.tables import load_splits
    splits, classes = load_splits(ws)
    labels = draw_labels(splits, classes, budget_of(ws, cfg), cfg.data.seed)
    text = labels.assign(path=ws.stored_paths(labels["path"])).to_csv(index=False)
    if not ws.labels_file.exists() or ws.labels_file.read_text(encoding="utf-8") != text:
        atomic_write_text(ws.labels_file, text)
    return labels, classes


def write_labels(folder, labels: pd.DataFrame, ws: Workspace) -> None:
    """labels.csv beside a model or run: the exact labeled images it trained and selected on.

    Args:
        folder (`str` or `Path`): the model or run folder.
        labels (`pd.DataFrame`): the labeled subset; its LABEL_COLUMNS are written.
        ws (`Workspace`): the workspace; paths inside it are stored relative to it.

    Returns:
        `None`: writes folder's labels.csv atomically.
    """
    stored = labels[LABEL_COLUMNS].assign(path=ws.stored_paths(labels["path"]))
    atomic_write_text(Workspace.labels_of(folder), stored.to_csv(index=False))


def realised(labels: pd.DataFrame, splits: pd.DataFrame, value: float) -> dict:
    """Per class: images asked for (count budgets), labeled, and available — what was delivered."""
    pool = splits[splits["split"].isin(("train", "val"))].groupby("class_name").size()
    got = labels.groupby(["class_name", "split"]).size().unstack(fill_value=0)
    out = {}
    for name in got.index:
        row = {"train": int(got.loc[name].get("train", 0)), "val": int(got.loc[name].get("val", 0)),
               "pool": int(pool.get(name, 0))}
        if value > 1:
            row["asked"] = int(value)
        out[str(name)] = row
    return out
