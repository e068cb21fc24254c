"""Guidance auto-tune: sweep guidance scales per class, pick each class's scale, write it into the
workspace config; `python -m core tune-guidance`.

For every class and every scale of the grid, `num` images are sampled (seeds as the dataset's, so
images already in synthetic/ are reused), scored by the filter classifier and measured by
core.evaluate.quality. Objective per (class, scale): acceptance rate under the config's selection rule x
coverage (Naeem et al.: the share of real images with a synthetic one inside their k-NN ball),
among scales whose copy rate stays at or under max(`copy_ceiling`, the class's real-vs-real copy
rate) — a class whose real images are near-duplicates of each other (blank background) shows
"copies" even among held-out real images, and a scale is not blamed for matching that; ties go
to the smaller scale.
Acceptance alone favours large scales that collapse onto a few confident modes; coverage alone
favours s = 0; the product asks for images that are both confidently of their class and spread
over the real class.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import load_config, save_config
from core.io import atomic_write_text
from core.workspace import Workspace

GRID = (0.0, 1.0, 3.0, 10.0, 30.0)
NUM = 50
COPY_CEILING = 0.05


def sweep(ws: Workspace, cfg: LabConfig, grid=GRID, num: int = NUM, features: str | None = None,
          copy_ceiling: float = COPY_CEILING, progress=None, stop=None) -> pd.DataFrame:
    """Sample, score and measure the grid; returns the sweep table (one row per class x scale,
    `chosen` marks each class's pick) and writes it to results/guidance_sweep.csv."""
    from core.evaluate.quality import measure_quality, floor_for
    from core.generate.sampling import SEED_STRIDE, generate_images
    from core.evaluate.selection import score_synthetic, select, synthetic_path
    grid = sorted({float(s) for s in grid})
    if not grid or min(grid) < 0:
        raise UserError(f"tune-guidance: the grid must hold scales >= 0, got {grid}")
    if num < 2 * 5 + 2:
        raise UserError(f"tune-guidance: --num must be >= 12 (coverage needs more than k=5 images), got {num}")
    from core.data.tables import load_splits
    classes = list(load_splits(ws)[1])     # the latent classifier's classes (generate checks them)
    files, total, done = [], len(classes) * len(grid), 0
    for label, cls in enumerate(classes):
        for scale in grid:
            if stop is not None and stop.is_set():
                return pd.DataFrame()
            rows = generate_images(ws, cfg, cls, num, cfg.sampling.seed + label * SEED_STRIDE, guidance_scale=scale,
                            stop=stop)
            files += [r["file"] for r in rows]
            done += 1
            if progress is not None:
                progress({"stage": "tune-guidance sampling", "step": done, "total": total, "class": cls,
                          "guidance_scale": scale})
    if stop is not None and stop.is_set():
        return pd.DataFrame()
    scores = score_synthetic(ws, cfg, progress=progress, stop=stop)
    if scores.attrs.get("stopped"):
        return pd.DataFrame()
    kept = select(ws, cfg)
    kept = kept[kept["file"].isin(set(files))]
    groups = kept.assign(path=[str(synthetic_path(ws, f)) for f in kept["file"]], set="all")
    groups["guidance_scale"] = pd.to_numeric(groups["guidance_scale"])
    result = measure_quality(ws, cfg, features=features, progress=progress, stop=stop,
                      groups=groups[["path", "file", "class", "guidance_scale", "set"]])
    if result.get("stopped"):
        return pd.DataFrame()
    acceptance = kept.groupby([kept["class"].astype(str), "guidance_scale"])["kept"].mean()
    table = []
    for row in result["rows"]:
        floor = floor_for(result, row)
        accept = float(acceptance.get((row["class"], row["guidance_scale"]), math.nan))
        table.append({**{k: row[k] for k in ("class", "guidance_scale", "n", "n_eval", "fd", "kid", "precision",
                                             "recall", "density", "coverage", "diversity", "copy_rate")},
                      "acceptance": accept, "floor_fd": floor.get("fd"), "floor_coverage": floor.get("coverage"),
                      "floor_copy_rate": floor.get("copy_rate"),
                      "objective": accept * row["coverage"],
                      "eligible": row["copy_rate"] <= max(copy_ceiling, floor.get("copy_rate", 0.0)),
                      "features": result["features"]})
    frame = pd.DataFrame(table).sort_values(["class", "guidance_scale"]).reset_index(drop=True)
    frame["chosen"] = False
    for _, g in frame.groupby("class"):
        # no accepted image at any eligible scale: every objective is 0 and no scale is better
        ok = g[g["eligible"] & (g["objective"] > 0)]
        if len(ok):
            best = ok["objective"].max()
            frame.loc[ok[ok["objective"] >= best - 1e-12].index[0], "chosen"] = True   # smallest scale on ties
    atomic_write_text(ws.guidance_sweep_csv, frame.to_csv(index=False))
    return frame


def choices(frame: pd.DataFrame) -> dict[str, float]:
    chosen = frame[frame["chosen"]]
    return {str(c): float(s) for c, s in zip(chosen["class"], chosen["guidance_scale"])}


def apply_choices(ws: Workspace, cfg: LabConfig, picks: dict[str, float]) -> LabConfig:
    """The workspace's stored config (else `cfg`) with sampling.class_guidance_scales set to
    `picks`, saved back: one-off --set overrides of the sweep itself are not made permanent."""
    stored = ws.config_file
    base = load_config(stored) if stored.exists() else cfg
    entries = tuple(f"{c}={s:g}" for c, s in sorted(picks.items()))
    new = replace(base, sampling=replace(base.sampling, class_guidance_scales=entries)).validate()
    save_config(new, ws.root)
    return new


def tune_guidance(ws: Workspace, cfg: LabConfig, grid=GRID, num: int = NUM, features: str | None = None,
                  copy_ceiling: float = COPY_CEILING, progress=None, stop=None) -> dict:
    """sweep + write the picks into the workspace config. {"stopped", "choices", "table"}.

    Args:
        ws (`Workspace`): the budget view to sample in.
        cfg (`LabConfig`): the config.
        grid (`tuple[float]`, *optional*, defaults to GRID): the guidance scales tried.
        num (`int`, *optional*, defaults to NUM): images per class and scale.
        features (`str`, *optional*, defaults to `None`): the feature space (`feature_space`).
        copy_ceiling (`float`, *optional*, defaults to COPY_CEILING): the largest near-copy share a pick may have.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.

    Returns:
        `dict`: {"stopped": True} when stopped, else "stopped", "choices" (class -> scale, saved as
        sampling.class_guidance_scales), "table", "no_eligible" (classes without a pick).
    """
    frame = sweep(ws, cfg, grid, num, features, copy_ceiling, progress, stop)
    if frame.empty:
        return {"stopped": True}
    picks = choices(frame)
    if picks:
        apply_choices(ws, cfg, picks)
    return {"stopped": False, "choices": picks, "table": frame,
            "no_eligible": sorted(set(frame["class"]) - set(picks))}
