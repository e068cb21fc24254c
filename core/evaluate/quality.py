"""How good are the synthetic images: fidelity, diversity and memorisation per class x guidance
scale, each number beside its real-vs-real floor; `python -m core evaluate`.

The floor: each class's real labeled images (`real_reference`) are split once, at random, into
two disjoint halves A and B. Every synthetic group is compared with half A using a subsample of
the size of half B (or all of it when smaller), and the floor is the same metric between A and B
at that same size, so both numbers carry the same small-sample bias (FD in particular grows as n
shrinks). Memorisation compares each synthetic image with every real image the models saw (the
pre-training pools and the labeled train split); its floor is half B against those images minus
B itself: how close a real image that was not in the set lands.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from core.evaluate import quality_metrics as qm
from core.errors import UserError
from core.config.lab_config import LabConfig
from core.evaluate.features import embed_files, feature_space
from core.io import atomic_write_text
from core.workspace import Workspace

METRICS = ["fd", "kid", "precision", "recall", "density", "coverage", "diversity", "nn_ratio", "copy_rate"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def real_reference(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """The real labeled images each class is measured against: (path, label, class_name) — the
    label budget's own images (core.data.budget), the only labels this view's models may see.

    Args:
        ws (`Workspace`): the budget view.
        cfg (`LabConfig`): the config (data.seed draws the budget).

    Returns:
        `pd.DataFrame`: one row per image; labels.csv is rewritten if it changed (`budget_labels`).
    """
    from core.data.budget import budget_labels
    frame, _ = budget_labels(ws, cfg)
    return frame[["path", "label", "class_name"]].reset_index(drop=True)


def seen_images(ws: Workspace, cfg: LabConfig | None = None) -> pd.DataFrame:
    """Every real image the generator or its guidance saw: pools + the budget's labeled train
    images (path, source); without a config, the whole labeled train split."""
    from core.data.tables import load_pools, load_splits
    if cfg is not None:
        from core.data.budget import budget_labels
        splits = budget_labels(ws, cfg)[0]
    else:
        splits, _ = load_splits(ws)
    train = splits[splits["split"] == "train"]
    frames = [pd.DataFrame({"path": train["path"].astype(str), "source": "labeled train"})]
    try:
        pools = load_pools(ws)
        frames.append(pd.DataFrame({"path": pools["path"].astype(str), "source": "pool " + pools["pool"].astype(str)}))
    except UserError:
        pass   # a workspace without pools: memorisation is measured against the labeled set only
    return pd.concat(frames, ignore_index=True).drop_duplicates("path").reset_index(drop=True)


def synthetic_groups(ws: Workspace, cfg: LabConfig, synthetic: str | Path | None = None) -> pd.DataFrame:
    """The images to measure: (path, file, class, guidance_scale, set). The workspace's manifest
    (set "all") plus the config's own images its selection rule keeps (set "accepted"), or
    a class-per-folder image set (set "external", guidance_scale NaN)."""
    classes = sorted(real_reference(ws, cfg)["class_name"].astype(str).unique())
    if synthetic is not None:
        return _external(Path(synthetic).expanduser(), classes)
    from core.evaluate.selection import load_manifest, synthetic_path
    manifest = load_manifest(ws)
    manifest = manifest.assign(path=[str(synthetic_path(ws, f)) for f in manifest["file"]], set="all")
    unknown = sorted(set(manifest["class"].astype(str)) - set(classes))
    if unknown:
        raise UserError(f"{ws.synthetic_manifest}: class(es) {unknown} have no real labeled images "
                        f"(known: {', '.join(classes)})")
    frames = [manifest]
    if ws.synthetic_scores.exists():
        from core.evaluate.selection import current_selection  # the images this config made (not other canvases)
        kept = current_selection(ws, cfg)
        kept = kept[kept["kept"].astype(bool)]
        frames.append(kept.assign(path=[str(synthetic_path(ws, f)) for f in kept["file"]], set="accepted"))
    out = pd.concat(frames, ignore_index=True)
    out["guidance_scale"] = pd.to_numeric(out["guidance_scale"], errors="coerce")
    return out[["path", "file", "class", "guidance_scale", "set"]]


def _external(root: Path, classes: list[str]) -> pd.DataFrame:
    if not root.is_dir():
        raise UserError(f"--synthetic: no folder at {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"--synthetic {root}: no class folders (expected {root}/CLASS/*.png)")
    rows = []
    for folder in folders:
        if folder.name not in classes:
            raise UserError(f"--synthetic: class folder {folder.name!r} is not a class of this workspace "
                            f"({', '.join(classes)})")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--synthetic: class folder {folder} holds no images")
        rows += [{"path": str(p), "file": str(p.relative_to(root)), "class": folder.name} for p in files]
    return pd.DataFrame(rows).assign(guidance_scale=np.nan, set="external")


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def _fidelity(ref: np.ndarray, cand: np.ndarray, k: int) -> dict:
    out = dict.fromkeys(["fd", "kid", "precision", "recall", "density", "coverage", "diversity"], math.nan)
    if len(cand) >= 2 and len(ref) >= 2:
        out["fd"] = qm.frechet_distance(ref, cand)
        out["kid"] = qm.kernel_distance(ref, cand)
        out["diversity"] = qm.diversity(cand)
    if min(len(ref), len(cand)) > k:
        out.update(qm.prdc(ref, cand, k))
    return out


def measure_quality(ws: Workspace, cfg: LabConfig, synthetic: str | Path | None = None, features: str | None = None,
                    progress=None, stop=None, seed: int = 0, k: int = qm.K_NEIGHBOURS,
                    percentile: float = qm.COPY_PERCENTILE, write: bool = True,
                    groups: pd.DataFrame | None = None) -> dict:
    """Measure every (set, class, guidance scale) group. Returns {"rows", "floor", "features",
    "k", "copy_percentile", "images": per-image nearest real neighbour frame, "skipped"}; with
    write, the rows and floors go to results/quality.csv and the per-image frame beside it.
    groups: measure exactly these images (columns as `synthetic_groups`) instead.

    Args:
        ws (`Workspace`): the budget view (real reference, synthetic set, feature cache).
        cfg (`LabConfig`): the config (selection, sampling, filter_classifier.image_size).
        synthetic (`str` or `Path`, *optional*, defaults to `None`): another synthetic folder to measure;
            None: the workspace's own.
        features (`str`, *optional*, defaults to `None`): the feature space (`feature_space`).
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.
        seed (`int`, *optional*, defaults to 0): the seed of the metrics' subsampling.
        k (`int`, *optional*, defaults to K_NEIGHBOURS): neighbours for precision/recall.
        percentile (`float`, *optional*, defaults to COPY_PERCENTILE): the real-vs-real distance percentile
            below which a synthetic image counts as a near copy.
        write (`bool`, *optional*, defaults to `True`): write results/quality.csv (the workspace's own set only).
        groups (`pd.DataFrame`, *optional*, defaults to `None`): the images to measure.

    Returns:
        `dict`: as above, or {"stopped": True} when stopped.
    """
    space = feature_space(features, ws, cfg.filter_classifier.image_size)
    real, seen = real_reference(ws, cfg), seen_images(ws, cfg)
    own_set = synthetic is None and groups is None    # only the workspace's own set is saved
    groups = synthetic_groups(ws, cfg, synthetic) if groups is None else groups
    paths = list(dict.fromkeys(list(real["path"].astype(str)) + list(seen["path"]) + list(groups["path"])))
    feats, ok, skipped = embed_files(space, ws, paths, progress=progress, stop=stop, stage="features")
    if feats is None:
        return {"stopped": True}
    row_of = {paths[i]: j for j, i in enumerate(ok)}
    F = feats.numpy().astype(np.float64)

    def lookup(ps) -> tuple[np.ndarray, np.ndarray]:
        idx = np.array([row_of.get(str(p), -1) for p in ps], dtype=int)
        return F[idx[idx >= 0]] if (idx >= 0).any() else np.empty((0, F.shape[1])), idx >= 0

    seen_f, seen_ok = lookup(seen["path"])
    seen_paths = seen["path"][seen_ok].to_numpy()
    if len(seen_f) < 2:
        raise UserError("memorisation needs at least 2 readable real images in the pools + train split")
    seen_nn, _ = qm.nearest(seen_f, seen_f, exclude_self=True)
    rows, floors, per_image = [], {}, []
    keys = list(groups.groupby(["set", "class", "guidance_scale"], dropna=False).groups)
    for step, (set_name, cls, scale) in enumerate(keys):
        if stop is not None and stop.is_set():
            return {"stopped": True}
        g = groups[(groups["set"] == set_name) & (groups["class"] == cls)
                   & ((groups["guidance_scale"] == scale) | (pd.isna(scale) & groups["guidance_scale"].isna()))]
        cand, cand_ok = lookup(g["path"])
        class_f, _ = lookup(real.loc[real["class_name"].astype(str) == str(cls), "path"])
        a, b = _halves(len(class_f), seed)
        n_eval = min(len(cand), len(b))
        sub = cand[np.random.default_rng(seed + 1).permutation(len(cand))[:n_eval]]
        row = {"set": set_name, "class": str(cls), "guidance_scale": None if pd.isna(scale) else float(scale),
               "n": int(len(cand)), "n_eval": int(n_eval), "n_real": int(len(a))}
        row.update(_fidelity(class_f[a], sub, k))
        nn_d, nn_i = qm.nearest(cand, seen_f) if len(cand) else (np.empty(0), np.empty(0, int))
        row.update(qm.memorisation(nn_d, seen_nn, percentile))
        rows.append(row)
        if (cls, n_eval) not in floors:
            floors[(cls, n_eval)] = _floor(class_f, a, b, n_eval, real, cls, seen_f, seen_paths, seen_nn,
                                           seed, k, percentile)
        if set_name != "accepted":
            thr = qm.copy_threshold(seen_nn, percentile)
            ratio = qm.ratios(nn_d, seen_nn)
            per_image.append(pd.DataFrame({
                "file": g["file"][cand_ok].to_numpy(), "class": str(cls), "guidance_scale": row["guidance_scale"],
                "nn_path": seen_paths[nn_i] if len(nn_i) else [], "nn_distance": nn_d, "ratio": ratio,
                "likely_copy": nn_d <= thr}))
        if progress is not None:
            progress({"stage": "quality", "step": step + 1, "total": len(keys)})
    out = {"rows": rows, "floor": list(floors.values()), "features": space.name, "k": k,
           "copy_percentile": percentile, "images": pd.concat(per_image, ignore_index=True) if per_image
           else pd.DataFrame(), "skipped": skipped, "stopped": False}
    if write and own_set:
        save(ws, out)
    return out


def _floor(class_f, a, b, n_eval, real, cls, seen_f, seen_paths, seen_nn, seed, k, percentile) -> dict:
    """The same numbers for real half B (n_eval of it) against half A: what 'as good as real' reads."""
    bsub = b[:n_eval] if n_eval else b
    out = {"set": "real vs real", "class": str(cls), "guidance_scale": None, "n": int(len(bsub)),
           "n_eval": int(len(bsub)), "n_real": int(len(a))}
    out.update(_fidelity(class_f[a], class_f[bsub], k))
    class_paths = real.loc[real["class_name"].astype(str) == str(cls), "path"].astype(str).to_numpy()
    held = set(class_paths[b])
    others = np.array([p not in held for p in seen_paths])   # B measured against what it is not part of
    nn_d, _ = qm.nearest(class_f[b], seen_f[others]) if others.any() else (np.empty(0), None)
    out.update(qm.memorisation(nn_d, seen_nn, percentile))
    return out


def save(ws: Workspace, result: dict) -> None:
    table = pd.DataFrame(result["rows"] + result["floor"])
    table["features"] = result["features"]
    atomic_write_text(ws.quality_csv, table.to_csv(index=False))
    images = result["images"]
    if "nn_path" in images:       # real images: relative to the workspace when inside it
        images = images.assign(nn_path=ws.stored_paths(images["nn_path"]))
    atomic_write_text(ws.quality_images_csv, images.to_csv(index=False))


def floor_for(result: dict, row: dict) -> dict:
    return next((f for f in result["floor"] if f["class"] == row["class"] and f["n_eval"] == row["n_eval"]), {})


def quality_summary(ws: Workspace, cfg: LabConfig, features: str | None = None, progress=None, stop=None) -> dict:
    """What the experiment's summary.json records about the accepted synthetic set: per class,
    the accepted images the config made, each number with its floor, and the feature space.
    {"features", "k", "copy_percentile", "per_class": {CLASS: {"n", "fd", ..., "floor": {...}}}}.

    Args:
        ws (`Workspace`): the budget view.
        cfg (`LabConfig`): the config whose accepted images are measured (at its guidance scale per class).
        features (`str`, *optional*, defaults to `None`): the feature space (`feature_space`).
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.

    Returns:
        `dict`: as above (nothing written), or {"stopped": True} when stopped.
    """
    from core.evaluate.selection import current_selection
    kept = current_selection(ws, cfg)
    kept = kept[kept["kept"].astype(bool)]
    result = measure_quality(ws, cfg, features=features, progress=progress, stop=stop, write=False)
    if result.get("stopped"):
        return {"stopped": True}
    per_class = {}
    for row in result["rows"]:
        if row["set"] != "accepted":
            continue
        n_made = int((kept["class"].astype(str) == row["class"]).sum())
        scale_ok = row["guidance_scale"] is None or abs(row["guidance_scale"] - cfg.sampling.scale_for(row["class"])) < 1e-9
        if scale_ok and n_made:
            per_class[row["class"]] = {**{m: _clean(row[m]) for m in ["n", "n_eval", *METRICS]},
                                       "floor": {m: _clean(v) for m, v in floor_for(result, row).items()
                                                 if m in METRICS or m == "n_eval"}}
    return {"features": result["features"], "k": result["k"], "copy_percentile": result["copy_percentile"],
            "per_class": per_class}


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def format_table(result: dict) -> str:
    """Plain text: one line per group, each number as 'value (floor)'."""
    head = (f"feature space: {result['features']}\nnumbers as synthetic (real-vs-real floor); k={result['k']} "
            f"for precision/recall/density/coverage; copy = share at or under the real set's "
            f"{result['copy_percentile']:g}th-percentile nearest-neighbour distance")
    cols = ["set", "class", "scale", "n", *METRICS]
    lines = [head, "  ".join(f"{c:>17}" if c in METRICS else f"{c:>10}" for c in cols)]
    for row in result["rows"]:
        floor = floor_for(result, row)
        cells = [row["set"], row["class"], "-" if row["guidance_scale"] is None else f"{row['guidance_scale']:g}",
                 f"{row['n']}/{row['n_eval']}"]
        out = [f"{c:>10}" for c in cells]
        out += [f"{_num(row[m]):>8} ({_num(floor.get(m, math.nan)):>6})" for m in METRICS]
        lines.append("  ".join(out))
    return "\n".join(lines)


def _num(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def json_report(result: dict) -> dict:
    keys = ["class", "guidance_scale", "n", "fd", "kid", "precision", "recall", "density", "coverage",
            "diversity", "copy_rate"]
    extra = ["set", "n_eval", "nn_ratio"]
    return {"rows": [{k: _clean(r[k]) for k in keys + extra} for r in result["rows"]],
            "floor": [{k: _clean(r[k]) for k in keys + extra} for r in result["floor"]],
            "features": result["features"], "k": result["k"], "copy_percentile": result["copy_percentile"]}
