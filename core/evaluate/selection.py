"""Selective filtering of synthetic images: score once with the filter classifier, re-filter free.

`score_synthetic` is the only costly step (one forward pass per image) and stores everything a
rule needs in synthetic/scores.csv; `apply_threshold` and `acceptance_curve` then work on that
table alone (vectorised pandas / numpy), so the UI can move a slider without recomputing.
With `selection.calibration = "validation"` each class gets its own threshold (`calibrate`), set
from the filter classifier's confidence on the budget's real validation images and stored in
synthetic/thresholds.csv beside the scores. `selection.realism` adds the checks against the real
class (core.evaluate.judge: k-NN radius, colour range) to the rule; every check's outcome is a
`pass_*` column of the selection, counted per class by `check_counts`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from PIL import Image

from core.config.checks import check_value, choices, field_range
from core.config.lab_config import REALISM_CHECKS, LabConfig
from core.errors import ConfigError, UserError
from core.evaluate.judge import COLOUR_COLUMNS, Judge
from core.generate.sampling import made_by_config
from core.io import atomic_dir, atomic_write_text, folder_hash, read_png_params, save_png
from core.workspace import Workspace

STRATEGIES = choices("selection", "strategy")
SCORE_COLUMNS = ["confidence", "predicted", "predicted_class", "nearest_class", "nearest_distance",
                 "centroid_distance", "knn_ratio", *COLOUR_COLUMNS, "colour_ok", "error"]
EXPORT_COLUMNS = ["file", "class", "label", "seed", "guidance_scale", "steps", "scheduler", "eta",
                  "unet_hash", "vae_hash", "classifier_hash", "filter_hash", "confidence",
                  "centroid_distance", "nearest_class", "knn_ratio", "colour_ok", "kept"]
CHECKS = ("confidence", "centroid", *REALISM_CHECKS)    # each one a pass_* column of the selection
REALISM_COLUMNS = {"knn": "knn_ratio", "colour": "colour_ok"}   # the score each realism check reads
MIN_VAL_IMAGES = 5      # fewer real validation images of a class: its quantile is noise, the global threshold stays
THRESHOLD_COLUMNS = ["class", "threshold", "rule", "n_val_images", "val_quantile", "quantile",
                     "global_threshold", "filter_hash"]


def synthetic_path(ws: Workspace, file: str) -> Path:
    """Manifest `file` entries are relative to synthetic/ (absolute paths are accepted too)."""
    p = Path(str(file))
    return p if p.is_absolute() else ws.synthetic_dir / p


def load_manifest(ws: Workspace) -> pd.DataFrame:
    path = ws.synthetic_manifest
    if not path.exists():
        raise UserError(f"no synthetic set: {path} is missing (run `python -m core sample` first)")
    manifest = pd.read_csv(path, dtype={"class": str})
    missing = {"file", "class"} - set(manifest.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return manifest.drop_duplicates("file", keep="last").reset_index(drop=True)   # a re-made file: its latest row


def score_synthetic(ws: Workspace, cfg: LabConfig, progress=None, stop=None,
                    batch_size: int = 64, reuse: bool = False) -> pd.DataFrame:
    """Score every manifest image (core.evaluate.judge): p(target), predicted class, nearest
    centroid + distances, k-NN ratio and colour against the class's real images.

    Unreadable images get NaN scores and an `error` reason (never kept); the table is written
    to synthetic/scores.csv atomically once all rows are scored, the real reference per class to
    synthetic/real_reference.csv. `reuse` keeps the stored scores of images already scored by the
    same filter classifier and scores only the new ones.
    """
    from core.evaluate.judge import load_judge
    manifest = load_manifest(ws)
    kept = None
    if reuse and ws.synthetic_scores.exists():
        # as text: the kept rows are written back byte for byte, so stage hashes over them hold
        old = pd.read_csv(ws.synthetic_scores, dtype=str, keep_default_na=False)
        complete = set(SCORE_COLUMNS) <= set(old.columns)      # older tables lack some checks
        same = (old["filter_hash"] == folder_hash(ws.filter_classifier_dir)) & complete
        kept = old[same & old["file"].isin(manifest["file"])].drop_duplicates("file", keep="last")
        manifest = manifest[~manifest["file"].isin(kept["file"])].reset_index(drop=True)
    judge = load_judge(ws, cfg)
    scores = _score(ws, manifest, judge, progress, stop, batch_size)
    if scores.attrs.get("stopped"):
        return scores
    atomic_write_text(ws.real_reference, judge.reference_table().assign(
        filter_hash=folder_hash(ws.filter_classifier_dir)).to_csv(index=False))
    text = scores.to_csv(index=False)
    if kept is not None:
        new = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        text = pd.concat([kept, new], ignore_index=True).fillna("").drop_duplicates("file", keep="last") \
            .to_csv(index=False)
    atomic_write_text(ws.synthetic_scores, text)
    if cfg.selection.calibration != "none":
        calibrate(ws, cfg)      # the per-class thresholds beside the scores, where the app reads them
    return load_scores(ws) if kept is not None else scores


def _score(ws: Workspace, manifest: pd.DataFrame, judge: Judge, progress, stop, batch_size: int) -> pd.DataFrame:
    from core.evaluate.inference import load_images
    classes = judge.classes
    unknown = sorted(set(manifest["class"].astype(str)) - set(classes))
    if unknown:
        raise UserError(f"synthetic/manifest.csv: class(es) {unknown} unknown to the filter "
                        f"classifier (trained on {classes}); retrain it on the same data")
    target = manifest["class"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    n = len(manifest)
    columns = {c: np.full(n, np.nan) for c in ("confidence", "nearest_distance", "centroid_distance",
                                                "knn_ratio", *COLOUR_COLUMNS)}
    columns.update(predicted=np.full(n, -1), nearest=np.full(n, -1), colour_ok=np.zeros(n, dtype=bool))
    errors = np.full(n, "", dtype=object)
    paths = [synthetic_path(ws, f) for f in manifest["file"]]
    for start in range(0, n, batch_size):
        if stop is not None and stop.is_set():
            partial = manifest.iloc[:0].copy()
            partial.attrs["stopped"] = True
            return partial
        rows = np.arange(start, min(start + batch_size, n))
        batch_paths = [str(paths[i]) for i in rows]
        images, keep, skipped = load_images(batch_paths, judge.info["image_size"])
        for i, p in zip(rows, batch_paths):
            errors[i] = skipped.get(p, "")
        if len(keep):
            for name, values in judge.score(images, target[rows[keep]]).items():
                columns[name][rows[keep]] = values
        if progress is not None:
            progress({"stage": "scoring", "step": int(rows[-1]) + 1, "total": n})
    name = np.array(classes + [""], dtype=object)       # -1 (unreadable, members disagree): ""
    pred, near = columns.pop("predicted"), columns.pop("nearest")
    return manifest.assign(label=target, confidence=columns.pop("confidence"), predicted=pred,
                           predicted_class=name[pred], nearest_class=name[near], **columns,
                           error=errors, filter_hash=folder_hash(ws.filter_classifier_dir))


def load_scores(ws: Workspace) -> pd.DataFrame:
    path = ws.synthetic_scores
    if not path.exists():
        raise UserError(f"no scores: {path} is missing (run `python -m core select` or the run command)")
    return pd.read_csv(path, keep_default_na=False, na_values=[""],
                       dtype={"class": str, "nearest_class": str, "predicted_class": str, "error": str})


def apply_threshold(scores: pd.DataFrame, threshold: float, strategy: str = "threshold",
                    quota_per_class: int = 0, per_class: Mapping[str, float] | None = None,
                    realism: tuple[str, ...] = ()) -> pd.DataFrame:
    """Copy of `scores` with a boolean `kept`, the within-class `rank` used by the quota, the
    `threshold` each row was held to (NaN under the centroid rule) and a `pass_CHECK` column per
    check in CHECKS, whatever the rule (so every check can be counted).

    threshold: keep p(target) >= threshold, most confident first; `per_class` {class: threshold}
               (from `calibrate`) overrides it for the classes it names.
    centroid:  the paper's rule, keep when the nearest class centroid is the target class,
               nearest first (the threshold is not used).
    realism:   the checks against the real class that must pass too ("knn", "colour").
    quota_per_class > 0 keeps at most that many per class, best-ranked first.
    """
    strategy, quota_per_class = _check_rule(threshold, strategy, quota_per_class, per_class, realism)
    out = scores.copy()
    conf = out["confidence"].to_numpy(dtype=np.float64)
    bar = out["class"].astype(str).map(dict(per_class or {})).fillna(threshold).to_numpy(np.float64)
    out["pass_confidence"] = conf >= bar                 # NaN (unreadable) compares False
    out["pass_centroid"] = (out["nearest_class"].astype(str) == out["class"].astype(str)).to_numpy() \
        & np.isfinite(out["centroid_distance"].to_numpy(dtype=np.float64))
    missing = [c for c in realism if c not in REALISM_COLUMNS or REALISM_COLUMNS[c] not in out]
    if missing:
        raise UserError(f"selection.realism={','.join(realism)}: the stored scores predate the "
                        f"{'/'.join(missing)} check; score them again (`python -m core select --rescore`)")
    out["pass_knn"] = out["knn_ratio"].to_numpy(np.float64) < 1 if "knn_ratio" in out else False
    out["pass_colour"] = out["colour_ok"].astype(str).str.lower().eq("true").to_numpy() \
        if "colour_ok" in out else False
    ok = out["pass_confidence" if strategy == "threshold" else "pass_centroid"].to_numpy().copy()
    for check in realism:
        ok &= out[f"pass_{check}"].to_numpy(dtype=bool)
    if strategy == "threshold":
        key = -conf
        out["threshold"] = bar
    else:
        key = out["centroid_distance"].to_numpy(dtype=np.float64)
        out["threshold"] = np.nan
    rank = pd.Series(np.where(ok, key, np.inf), index=out.index) \
        .groupby(out["class"].to_numpy()).rank(method="first").to_numpy()
    out["rank"] = np.where(ok, rank, np.nan)
    out["kept"] = ok & ((quota_per_class == 0) | (rank <= quota_per_class))
    return out


def _check_rule(threshold, strategy, quota_per_class, per_class, realism) -> tuple[str, int]:
    """The rule's values as their fields declare them (strategy, quota); UserError naming the first bad one."""
    try:
        strategy = check_value("selection.strategy", strategy)
        quota_per_class = check_value("selection.quota_per_class", quota_per_class)
        check_value("selection.realism", tuple(realism))
    except ConfigError as e:
        raise UserError(str(e)) from None
    allowed = field_range("selection", "threshold")
    for name, t in {"": threshold, **(per_class or {})}.items():
        if t not in allowed:
            where = f" (class {name})" if name else ""
            raise UserError(f"selection.threshold{where} must be {allowed.rule()}, got {t}")
    return strategy, quota_per_class


def check_counts(selected: pd.DataFrame, classes: list[str] | None = None) -> pd.DataFrame:
    """Per class (index): images, how many pass each check of CHECKS, and how many the rule
    keeps (`apply_threshold` output)."""
    classes = classes or sorted(selected["class"].astype(str).unique())
    frame = pd.DataFrame({"class": selected["class"].astype(str), "images": 1,
                          **{c: selected[f"pass_{c}"].astype(bool) for c in CHECKS},
                          "kept": selected["kept"].astype(bool)})
    return frame.groupby("class").sum().reindex(classes, fill_value=0).astype(int)


def acceptance_curve(scores: pd.DataFrame, thresholds) -> pd.DataFrame:
    """Accepted count and rate per class (and "all") at each threshold: tidy, one row each."""
    t = np.asarray(list(thresholds), dtype=np.float64)
    conf = scores["confidence"].to_numpy(dtype=np.float64)
    hits = conf[None, :] >= t[:, None]                               # (T, N)
    cls = scores["class"].astype(str).to_numpy()
    frames = []
    for name in list(pd.unique(cls)) + ["all"]:
        mask = np.ones_like(cls, dtype=bool) if name == "all" else cls == name
        accepted = hits[:, mask].sum(1)
        total = int(mask.sum())
        frames.append(pd.DataFrame({"threshold": t, "class": name, "accepted": accepted,
                                    "total": total, "rate": accepted / max(total, 1)}))
    return pd.concat(frames, ignore_index=True)


def export_accepted(ws: Workspace, kept_df: pd.DataFrame, out_dir: str | Path | None = None) -> Path:
    """Write the kept images as an ImageFolder (CLASS/*.png) + manifest.csv, atomically.

    Each PNG is re-saved (lossless) with its generation parameters plus its filter scores in the
    "parameters" text chunk, so a copied file still says where it came from and why it was kept.
    """
    out_dir = Path(out_dir) if out_dir is not None else ws.accepted_dir
    rows = kept_df[kept_df["kept"].astype(bool)] if "kept" in kept_df.columns else kept_df.assign(kept=True)
    records, skipped = [], []
    with atomic_dir(out_dir) as tmp:
        for row in rows.to_dict("records"):
            src = synthetic_path(ws, row["file"])
            rel = Path(str(row["class"])) / src.name
            try:
                params = read_png_params(src)
                with Image.open(src) as im:
                    image = im.convert("RGB")
            except (OSError, ValueError) as e:     # damaged since scoring: skip it, list it
                skipped.append({"file": row["file"], "reason": f"{type(e).__name__}: {e}"})
                continue
            params.update({k: _plain(row.get(k)) for k in
                           ("confidence", "centroid_distance", "nearest_class", "knn_ratio", "colour_ok",
                            "filter_hash")})
            save_png(image, tmp / rel, params)
            record = {c: _plain(row.get(c)) for c in EXPORT_COLUMNS}
            record.update(file=rel.as_posix(), kept=True)
            records.append(record)
        pd.DataFrame(records, columns=EXPORT_COLUMNS).to_csv(Workspace.manifest_of(tmp), index=False)
        if skipped:
            pd.DataFrame(skipped).to_csv(Workspace.skipped_of(tmp), index=False)
    return out_dir


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def select(ws: Workspace, cfg: LabConfig, threshold: float | None = None, strategy: str | None = None,
           quota: int | None = None) -> pd.DataFrame:
    """Stored scores filtered with the config's (or the given) rule; calibrated per class when
    `selection.calibration` says so, with the given threshold as the global bar."""
    sel = cfg.selection
    threshold = sel.threshold if threshold is None else threshold
    strategy = strategy or sel.strategy
    per_class = class_thresholds(ws, cfg, threshold)
    return apply_threshold(load_scores(ws), threshold, strategy,
                           sel.quota_per_class if quota is None else quota, per_class, sel.realism)


# --- per-class thresholds calibrated on validation ------------------------------------------------

def val_confidences(ws: Workspace, cfg: LabConfig) -> tuple[pd.DataFrame, list[str]]:
    """The filter classifier's scores of the budget's real VALIDATION images (their labels come
    only from core.data.budget: the val part of this budget, never a test image), in the same pass as
    the synthetic images; kept in synthetic/val_scores.csv while classifier and images stay."""
    from core.data.budget import budget_labels
    from core.evaluate.judge import load_judge
    labels, classes = budget_labels(ws, cfg)
    val = labels[labels["split"] == "val"]
    images = pd.DataFrame({"file": val["path"].astype(str).to_numpy(),
                           "class": val["class_name"].astype(str).to_numpy()})
    made_by = folder_hash(ws.filter_classifier_dir)
    if ws.val_scores.exists():
        old = pd.read_csv(ws.val_scores, keep_default_na=False, na_values=[""],
                          dtype={"file": str, "class": str, "error": str})
        if (old["filter_hash"].astype(str) == made_by).all() and set(SCORE_COLUMNS) <= set(old.columns) and \
                sorted(zip(old["file"], old["class"])) == sorted(zip(images["file"], images["class"])):
            return old, classes
    scored = _score(ws, images, load_judge(ws, cfg), None, None, 64)
    atomic_write_text(ws.val_scores, scored.to_csv(index=False))
    return scored, classes


def thresholds_at(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The calibration table's per-class thresholds with `threshold` as the global bar (the app's
    slider moves it; no classifier pass): threshold_c = min(threshold, val quantile_c).

    Why this rule: the q-quantile of the class's real validation confidences is the bar that
    (1 - q) of real images of the class clear, so a synthetic image is held to "as typical as most
    real images of its class" — the filter is less sure of some classes (dermis in the demo) even
    on real tissue, and one global bar then rejects that class almost whole. Capped at the global
    threshold: calibration only lowers a bar the class's real images cannot reach, never makes an
    easy class stricter than the user asked. No constant floor: a bar set below what the class's
    real images pass admitted glass as dermis (p >= 0.5 took 35 flat tiles of 115); what confidence
    alone cannot tell apart, the realism checks against the real class do (selection.realism).
    Fewer than MIN_VAL_IMAGES real validation images: the global bar."""
    out = table.copy()
    q, n = out["val_quantile"].astype(float), out["n_val_images"].astype(int)
    enough = (n >= MIN_VAL_IMAGES) & q.notna()
    bar = np.where(enough, np.minimum(threshold, q.fillna(threshold)), threshold)
    level = out["quantile"].astype(float)
    rules = []
    for ok, t, v, k, lv in zip(enough, bar, q, n, level):
        seen = f"q{lv:g} of {k} val images = {v:.3f}"
        if not ok:
            rules.append(f"global (fallback: {k} val image{'s' * (k != 1)}, fewer than {MIN_VAL_IMAGES})")
        elif t >= threshold:
            rules.append(f"global ({seen} is not below it)")
        else:
            rules.append(seen)
    return out.assign(threshold=bar.astype(float), rule=rules, global_threshold=float(threshold))


def calibrate(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """Per-class thresholds (THRESHOLD_COLUMNS) from the real validation images, written to
    synthetic/thresholds.csv (only when they changed) for the experiment and the app to read."""
    sel = cfg.selection
    val, classes = val_confidences(ws, cfg)
    conf = val["confidence"].to_numpy(np.float64)
    rows = []
    for name in classes:
        mine = conf[(val["class"].astype(str) == name).to_numpy() & np.isfinite(conf)]
        rows.append({"class": name, "n_val_images": len(mine), "quantile": sel.calibration_quantile,
                     "val_quantile": float(np.quantile(mine, sel.calibration_quantile)) if len(mine) else np.nan,
                     "filter_hash": folder_hash(ws.filter_classifier_dir)})
    table = thresholds_at(pd.DataFrame(rows), sel.threshold)[THRESHOLD_COLUMNS]
    text = table.to_csv(index=False)
    if not ws.selection_thresholds.exists() or ws.selection_thresholds.read_text(encoding="utf-8") != text:
        atomic_write_text(ws.selection_thresholds, text)
    return table


def load_thresholds(ws: Workspace) -> pd.DataFrame:
    """synthetic/thresholds.csv as `calibrate` wrote it; empty when it has not run."""
    if not ws.selection_thresholds.exists():
        return pd.DataFrame(columns=THRESHOLD_COLUMNS)
    return pd.read_csv(ws.selection_thresholds, dtype={"class": str, "rule": str})


def class_thresholds(ws: Workspace, cfg: LabConfig, threshold: float | None = None) -> dict[str, float] | None:
    """{class: threshold} under the config's calibration (None when it is "none")."""
    if cfg.selection.calibration == "none":
        return None
    table = thresholds_at(calibrate(ws, cfg), cfg.selection.threshold if threshold is None else threshold)
    return dict(zip(table["class"].astype(str), table["threshold"].astype(float)))


def current_selection(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """Stored scores with the config's rule applied, restricted to the images this config made:
    the manifest also keeps images from other guidance scales / models (the UI adds to it), and
    mixing those in would make the experiment measure something its config does not say."""
    kept = select(ws, cfg)
    return kept[made_by_config(ws, cfg, kept)]


def selection_report(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """Per class (index): the synthetic images this config made, how many pass each check and how
    many the config's rule keeps (`check_counts`); beside them, `val_*`, the same counts over the
    budget's real validation images: what the class's real images pass (no quota: it is a cap);
    without the filter classifier that scored them (scores from elsewhere) only the former."""
    kept = current_selection(ws, cfg)
    if not Workspace.config_of(ws.filter_classifier_dir).exists():
        return check_counts(kept)
    val, classes = val_confidences(ws, cfg)
    sel = cfg.selection
    real = apply_threshold(val, sel.threshold, sel.strategy, 0, class_thresholds(ws, cfg), sel.realism)
    return check_counts(kept, classes).join(check_counts(real, classes).add_prefix("val_"))
