"""The protocol grid: per label budget, seed and synthetic ratio, a baseline and every arm of
`experiment.arms` (core.protocol.arms), each trained on the baseline's real batches for the same
steps (core.train.batches) and tested once. Each run is one row of results/runs.csv and a folder
results/runs/KEY/ (labels.csv, synthetic.csv: the images it added, predictions.csv); a rerun
skips rows whose run key is already there, rows of other configs wait in the archive.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from core.config.lab_config import LabConfig
from core.config.store import config_hash, identity
from core.data.budget import budget_labels, budget_name, budget_views, write_labels
from core.errors import UserError
from core.evaluate.metrics import at_chance
from core.io import atomic_write_text
from core.protocol.arms import budget_pools, draw_arm
from core.protocol.stages import read_marker
from core.workspace import Workspace

# Part of every run key: raised when a grid run's training changes in a way no config field says
# (2: equal real exposure, per-source BatchNorm statistics, H&E augmentation, competitor arms).
GRID_PROTOCOL = 2
# a fraction of 1 labels the whole pool: no label-hidden image is left to pseudo-label
NEEDS_UNLABELED = ("pseudo", "selected+pseudo")


def plan_runs(cfg: LabConfig) -> list[dict]:
    """Every run: per budget and seed a baseline, and per ratio each arm of experiment.arms.

    Arms that need unlabeled images are left out at budget 1.0.

    Args:
        cfg (`LabConfig`): its experiment section.

    Returns:
        `list[dict]`: {"arm", "label_fraction", "synthetic_ratio", "seed"} per run.
    """
    e = cfg.experiment
    runs = []
    for f in e.label_fractions:
        arms = [a for a in e.arms if not (f == 1.0 and a in NEEDS_UNLABELED)]
        for seed in e.seeds_for(budget_name(f)):
            runs.append({"arm": "baseline", "label_fraction": f, "synthetic_ratio": 0.0, "seed": seed})
            runs += [{"arm": arm, "label_fraction": f, "synthetic_ratio": r, "seed": seed}
                     for r in e.synthetic_ratios for arm in arms]
    return runs


def run_keys(ws: Workspace, cfg: LabConfig, plan: list[dict]) -> list[str]:
    """Each grid run's key in results/runs.csv: the run, the configs it reads, its inputs' hashes
    (the data, and the scores of its budget's synthetic images, which hash the filter classifier)."""
    views = dict(budget_views(ws, cfg))
    base = {"classify": identity(cfg.downstream), "selection": identity(cfg.selection),
            "sampling": identity(cfg.sampling),           # which synthetic images the runs drew from
            "topup_rounds": cfg.experiment.topup_rounds, "subset_seed": cfg.data.seed,
            "data": read_marker(ws, "data").get("output_hash"), "grid_protocol": GRID_PROTOCOL}
    return [config_hash(base, r, read_marker(views[r["label_fraction"]], "scoring").get("output_hash"))
            for r in plan]


INT_COLUMNS = ("seed", "n_real", "n_val", "n_synthetic", "n_pseudo", "n_added_wanted", "n_test", "steps",
               "batch_size", "real_batch", "added_batch", "best_step", "skipped_files", "real_views_min",
               "real_views_max")


def write_runs(path: Path, runs: pd.DataFrame) -> None:
    # a resumed table must not turn counts into floats (NaN-free int columns stay int)
    runs = runs.copy()
    for col in INT_COLUMNS:
        if col in runs and runs[col].notna().all():
            runs[col] = runs[col].astype("int64")
    atomic_write_text(path, runs.to_csv(index=False))


def read_runs(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["run_key"])
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=["run_key"])     # a damaged table: its runs are redone


def _added_report(parts: dict, classes: list[str]) -> str:
    return json.dumps({part: {classes[k]: v for k, v in rep.items()} for part, rep in parts.items()})


def _pseudo_accuracy(parts: dict) -> float | None:
    """Share of the pseudo-labelled images drawn whose hidden label is the predicted one."""
    rep = parts.get("pseudo") or {}
    drawn = sum(r["drawn"] for r in rep.values())
    return sum(r["correct"] for r in rep.values()) / drawn if drawn else None


def run_one(ws: Workspace, bws: Workspace, cfg: LabConfig, run: dict, key: str, inputs: dict,
            test: pd.DataFrame, classes: list[str], report, stop) -> dict | None:
    """Train and test one run; write its folder; its runs.csv row, or None when stopped."""
    from core.train.image_classifier import metrics_on_test, train_image_classifier
    labels = inputs["labels"]
    real, val = labels[labels.split == "train"], labels[labels.split == "val"]
    added, parts = (None, {}) if run["arm"] == "baseline" else \
        draw_arm(run["arm"], inputs["pools"], real, run["synthetic_ratio"], run["seed"])
    t0 = time.perf_counter()
    model, history = train_image_classifier(real, val, classes, cfg.downstream, run["seed"], extra_df=added,
                                            progress=report, stop=stop, stage="downstream")
    if history.attrs["stopped"]:
        return None
    m = metrics_on_test(model, test, classes, cfg.downstream)
    run_dir = ws.run_dir(key)
    write_labels(run_dir, labels, ws)
    if added is not None:
        named = added.assign(class_name=[classes[k] for k in added["label"]], path=ws.stored_paths(added["path"]))
        atomic_write_text(ws.run_synthetic(key), named.to_csv(index=False))
    predictions = m["predictions"]
    if "path" in predictions:       # the test images: relative to the workspace when inside it
        predictions = predictions.assign(path=ws.stored_paths(predictions["path"]))
    atomic_write_text(ws.run_predictions(key), predictions.to_csv(index=False))
    a = history.attrs
    val_score = a["best_val_balanced_accuracy"]
    source = added["source"] if added is not None else pd.Series(dtype=str)
    return {"run_key": key, **run, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"], **{f"recall_{c}": v for c, v in m["per_class_recall"].items()},
            "n_real": len(real), "n_val": len(val), "n_synthetic": int(source.isin(("synthetic", "unselected")).sum()),
            "n_pseudo": int((source == "pseudo").sum()), "pseudo_label_accuracy": _pseudo_accuracy(parts),
            "n_added_wanted": sum(v["wanted"] for rep in parts.values() for v in rep.values()),
            "added_per_class": _added_report(parts, classes),
            "n_test": m["n"], "steps": a["steps"], "batch_size": a["batch_size"], "real_batch": a["real_batch"],
            "added_batch": a["added_batch"], "compute": cfg.downstream.compute, "norm": a["norm"],
            "real_views_per_image": a["real_views_per_image"], "real_views_min": a["real_views_min"],
            "real_views_max": a["real_views_max"], "added_share": a["added_share"],
            "real_sequence": a["real_sequence"], "model_selection": a["model_selection"],
            "best_step": a["best_step"], "val_balanced_accuracy": val_score,
            "at_chance": at_chance(val_score, len(classes), len(val)),
            "labels": ws.relative(Workspace.labels_of(run_dir)),
            "latent_classifier": ws.relative(bws.latent_classifier_dir),
            "filter_classifier": ws.relative(bws.filter_classifier_dir),
            "skipped_files": len(a["skipped"]) + len(m["skipped"]),
            "confusion_matrix": json.dumps(m["confusion_matrix"]),
            "seconds": round(time.perf_counter() - t0, 2)}


def selection_checks(ws: Workspace, cfg: LabConfig) -> dict:
    """{class: {images, confidence, centroid, knn, colour, kept, val_images, val_...}} of one budget."""
    from core.evaluate.selection import selection_report
    table = selection_report(ws, cfg)
    return {str(c): {k: int(v) for k, v in row.items()} for c, row in table.iterrows()}


def run_grid(ws: Workspace, cfg: LabConfig, progress=None, stop=None, after_run=None) -> pd.DataFrame:
    """Every planned run not yet in runs.csv; `after_run(done)` after each (the summary)."""
    from core.data.tables import load_splits
    splits, classes = load_splits(ws)
    test = splits[splits.split == "test"]
    if test.empty:
        raise UserError(f"{ws.split_manifest}: the test split is empty (pass --test PATH)")
    plan = plan_runs(cfg)
    keys = run_keys(ws, cfg, plan)
    # rows of other configs move to the archive (kept, not mixed in) and come back if that config does
    known = pd.concat([read_runs(ws.runs_csv), read_runs(ws.runs_archive_csv)], ignore_index=True)
    known = known.drop_duplicates("run_key", keep="first")
    done = known[known["run_key"].isin(keys)]
    done = done.set_index("run_key").loc[[k for k in keys if k in set(done["run_key"])]].reset_index()
    write_runs(ws.runs_archive_csv, known[~known["run_key"].isin(keys)])
    write_runs(ws.runs_csv, done)
    views, inputs = dict(budget_views(ws, cfg)), {}
    for i, (run, key) in enumerate(zip(plan, keys)):
        if key in set(done["run_key"]):
            continue
        if stop is not None and stop.is_set():
            break
        bws = views[run["label_fraction"]]
        if bws not in inputs:
            labels = budget_labels(bws, cfg)[0]
            inputs[bws] = {"labels": labels, "pools": budget_pools(bws, cfg, labels, splits, classes),
                           "checks": json.dumps(selection_checks(bws, cfg))}     # per budget, not per run

        def report(p, i=i):
            if progress is not None:
                progress({**p, "stage": "experiment", "run": i + 1, "runs": len(plan), **run})
        row = run_one(ws, bws, cfg, run, key, inputs[bws], test, classes, report, stop)
        if row is None:
            break
        # per class, how many of the images the run drew from passed each check
        row["selection_checks"] = inputs[bws]["checks"] if "selected" in run["arm"] else ""
        done = pd.DataFrame([row]) if done.empty else pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        write_runs(ws.runs_csv, done)
        if after_run is not None:
            after_run(done)
    return done
