"""How the selection compares with the real class, per label budget and class (the judge's numbers).

python -m benchmarks.selection_checks --workspace DIR [--set section.field=value ...] [--retrain]
                                      [--grids DIR] [--json OUT]

Per budget of experiment.label_fractions: with --retrain the filter classifier is trained anew
under the config (nothing else is); every synthetic image of the budget is scored again by the
judge (core.evaluate.judge), and the script prints, per class:
- generated, and how many pass each check: confidence (at the class's calibrated bar), centroid,
  k-NN realism, colour range; `kept`: what the config's rule keeps (selection.realism included);
- for three accepted sets (the config's rule; confidence alone at the calibrated bar; the old rule,
  confidence >= max(0.5, bar)): their size, the share inside the real class's colour range (the
  per-channel mean and pixel std range of the budget's real train + val images of the class) and
  the flat tiles among them (pixel std < 10);
- how many of the budget's real validation images each check passes (what real images pass);
- how often the filter's test predictions agree with each baseline run of the budget
  (results/runs.csv; a diagnostic read once, nothing is chosen on it).
--grids writes one PNG per budget of up to 12 accepted images per class (the rule's order).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.common import markdown_table
from core.config.presets import config_for
from core.data.budget import budget_labels, budget_name, budget_views
from core.data.tables import load_splits
from core.evaluate.inference import load_images, predict
from core.evaluate.judge import colour_stats
from core.evaluate.selection import (apply_threshold, class_thresholds, current_selection, load_thresholds,
                                     score_synthetic, selection_report, synthetic_path)
from core.models import load_filter_members
from core.workspace import Workspace

OLD_FLOOR = 0.5
FLAT_STD = 10.0


def real_ranges(bws: Workspace, cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{class: (lo, hi)} of [mean_r, mean_g, mean_b, pixel_std] over the budget's real train + val images."""
    labels, classes = budget_labels(bws, cfg)
    images, keep, _ = load_images(labels["path"], cfg.filter_classifier.image_size)
    stats, names = colour_stats(images), labels["class_name"].to_numpy()[keep]
    return {c: (stats[names == c].min(0), stats[names == c].max(0)) for c in classes}


def accepted_set_numbers(bws: Workspace, frame: pd.DataFrame, mask: np.ndarray, ranges: dict, size: int) -> dict:
    """{class: (n, share inside the real range, flat tiles)} of the images `mask` accepts."""
    out = {}
    for c, (lo, hi) in ranges.items():
        rows = frame[(frame["class"].astype(str) == c).to_numpy() & mask]
        if not len(rows):
            out[c] = (0, None, 0)
            continue
        images, _, _ = load_images([synthetic_path(bws, f) for f in rows["file"]], size, memo=False)
        stats = colour_stats(images)
        inside = ((stats >= lo) & (stats <= hi)).all(1)
        out[c] = (len(rows), float(inside.mean()), int((stats[:, 3] < FLAT_STD).sum()))
    return out


def agreement(ws: Workspace, bws: Workspace, value: float) -> dict:
    """{"filter test accuracy", "seed S": share of test images where the filter's prediction (the
    members' mean probabilities) equals baseline run S's}."""
    splits, _ = load_splits(ws)
    test = splits[splits.split == "test"]
    members, info = load_filter_members(bws)
    images, keep, _ = load_images(test["path"], int(info["image_size"]))
    probs = sum(predict(model, images)[0] for model, _ in members)
    mine = pd.Series(probs.argmax(1).numpy(), index=[_rel(p) for p in test["path"].to_numpy()[keep]])
    out = {"filter test accuracy": float((mine.to_numpy() == test["label"].to_numpy()[keep]).mean())}
    if not ws.runs_csv.exists():
        return out
    runs = pd.read_csv(ws.runs_csv)
    for row in runs[(runs.arm == "baseline") & (runs.label_fraction == value)].sort_values("seed").itertuples():
        pred = pd.read_csv(ws.run_predictions(row.run_key))
        theirs = pd.Series(pred["pred"].to_numpy(), index=[_rel(p) for p in pred["path"]])
        common = mine.index.intersection(theirs.index)
        out[f"seed {row.seed}"] = float((mine[common] == theirs[common]).mean())
    return out


def _rel(path: str) -> str:
    # predictions hold the paths of the machine that ran them: compare from labeled/ on
    text = Path(path).as_posix()
    return text.split("/labeled/", 1)[-1]


def save_grid(bws: Workspace, frame: pd.DataFrame, mask: np.ndarray, classes: list[str], out: Path,
              per_class: int = 12) -> None:
    """One row per class: its first `per_class` accepted images, most confident first."""
    tile = 64
    canvas = Image.new("RGB", (tile * per_class, tile * len(classes)), (40, 40, 40))
    for r, c in enumerate(classes):
        rows = frame[(frame["class"].astype(str) == c).to_numpy() & mask] \
            .sort_values("confidence", ascending=False).head(per_class)
        for k, f in enumerate(rows["file"]):
            with Image.open(synthetic_path(bws, f)) as im:
                canvas.paste(im.convert("RGB").resize((tile, tile)), (k * tile, r * tile))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def measure_budget(ws: Workspace, bws: Workspace, cfg, value: float, retrain: bool, grids: Path | None) -> dict:
    from core.train.filter_classifier import train_filter_classifier
    name, result = budget_name(value), {}
    if retrain:
        t0 = time.perf_counter()
        trained = train_filter_classifier(bws, cfg)
        result["filter"] = {"seconds": round(time.perf_counter() - t0, 1), "seeds": cfg.filter_classifier.seeds(),
                            "val_balanced_accuracy": trained["member_val_balanced_accuracy"]}
    t0 = time.perf_counter()
    score_synthetic(bws, cfg)
    result["scoring_seconds"] = round(time.perf_counter() - t0, 1)
    kept = current_selection(bws, cfg)
    report = selection_report(bws, cfg)
    bars = class_thresholds(bws, cfg) or {}
    conf_only = apply_threshold(kept.drop(columns=["kept", "rank", "threshold"]), cfg.selection.threshold,
                                "threshold", 0, bars or None)["kept"].to_numpy()
    old_bars = {c: max(OLD_FLOOR, t) for c, t in bars.items()} if bars else None
    old_rule = apply_threshold(kept.drop(columns=["kept", "rank", "threshold"]), cfg.selection.threshold,
                               "threshold", 0, old_bars)["kept"].to_numpy()
    ranges, size = real_ranges(bws, cfg), cfg.filter_classifier.image_size
    sets = {"rule": accepted_set_numbers(bws, kept, kept["kept"].to_numpy(), ranges, size),
            "confidence only": accepted_set_numbers(bws, kept, conf_only, ranges, size),
            f"old rule (floor {OLD_FLOOR:g})": accepted_set_numbers(bws, kept, old_rule, ranges, size)}
    val = pd.read_csv(bws.val_scores)
    val_old = {c: int(((val["class"] == c) & (val["confidence"] >= (old_bars or {}).get(c, cfg.selection.threshold))).sum())
               for c in report.index}
    rows = []
    for c, n in report.iterrows():
        row = {"budget": name, "class": c, "generated": n["images"], "confidence": n["confidence"],
               "centroid": n["centroid"], "k-NN": n["knn"], "colour": n["colour"], "kept": n["kept"]}
        for label, per in sets.items():
            k, share, flat = per[c]
            row[f"{label}: n"] = k
            row[f"{label}: in range"] = "n/a" if share is None else f"{100 * share:.0f}%"
            row[f"{label}: flat"] = flat
        row.update({"real val": n["val_images"], "val conf": n["val_confidence"], "val old bar": val_old[c],
                    "val centroid": n["val_centroid"], "val k-NN": n["val_knn"], "val colour": n["val_colour"],
                    "val kept": n["val_kept"], "bar": round(bars.get(c, cfg.selection.threshold), 3)})
        rows.append(row)
    result["per_class"] = rows
    result["agreement"] = agreement(ws, bws, value)
    result["thresholds"] = load_thresholds(bws).to_dict("records")
    if grids is not None:
        save_grid(bws, kept, kept["kept"].to_numpy(), list(report.index), grids / f"{name}-rule.png")
        save_grid(bws, kept, old_rule, list(report.index), grids / f"{name}-old-rule.png")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--retrain", action="store_true", help="train the filter classifier anew first")
    parser.add_argument("--budgets", nargs="*", default=None, help="budget names (default: all)")
    parser.add_argument("--grids", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ws = Workspace(args.workspace)
    cfg = config_for(ws, None, args.overrides)
    print(f"CPU threads {torch.get_num_threads()}; filter seeds {cfg.filter_classifier.seeds()}; "
          f"selection {cfg.selection}")
    out = {}
    for value, bws in budget_views(ws, cfg):
        name = budget_name(value)
        if args.budgets and name not in args.budgets:
            continue
        out[name] = measure_budget(ws, bws, cfg, value, args.retrain, args.grids)
        print(f"\n## budget {name}: filter {out[name].get('filter')}, agreement {out[name]['agreement']}")
        print(markdown_table(out[name]["per_class"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
