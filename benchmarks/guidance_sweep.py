"""Does guidance work? Filter-classifier confidence and acceptance vs guidance scale, and
noise-aware vs t=0-only (the reference's) latent classifier.

Needs a workspace with trained autoencoder, UNet, scheduler, latent classifier and filter
classifier (e.g. after `python -m core run --preset demo`). Works on a scratch copy (models
and data tables are copied; the real workspace is not touched).
`python -m benchmarks.guidance_sweep --workspace workspaces/demo [--num 16] [--scales 0,1,3,10,30]`
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmarks.common import markdown_table
from core.errors import UserError
from core.config.store import load_config
from core.config.presets import preset
from core.train.latent_classifier import train_latent_classifier
from core.generate.loading import load_pipeline
from core.generate.sampling import generate_images
from core.evaluate.selection import score_synthetic
from core.workspace import Workspace


def scratch_copy(ws: Workspace, into: Path) -> Workspace:
    """A workspace sharing the models, data tables and latent cache, with its own synthetic folder."""
    dst = Workspace(into).ensure()
    for src, dest in [(ws.models_dir, dst.models_dir), (ws.data_dir, dst.data_dir), (ws.cache_dir, dst.cache_dir)]:
        if src.exists():
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    return dst


def sweep(ws: Workspace, cfg, scales, num: int, threshold: float) -> pd.DataFrame:
    classes = list(load_pipeline(ws, cfg).latent_classifier.config.class_names)
    for s in scales:
        for label, name in enumerate(classes):
            generate_images(ws, cfg, name, num, seed=cfg.sampling.seed + label * 1_000_000, guidance_scale=s)
    scores = score_synthetic(ws, cfg)
    scores["accepted"] = scores["confidence"] >= threshold
    return (scores.groupby(["guidance_scale", "class"])
            .agg(mean_p_target=("confidence", "mean"), acceptance=("accepted", "mean"), n=("accepted", "size"))
            .reset_index())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", required=True, type=Path)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--num", type=int, default=16, help="images per class and scale")
    ap.add_argument("--scales", default="0,1,3,10,30")
    ap.add_argument("--threshold", type=float, default=None, help="default: selection.threshold")
    ap.add_argument("--compare-scale", type=float, default=10.0, help="scale for the noise-aware vs t=0 table")
    args = ap.parse_args(argv)
    ws = Workspace(args.workspace)
    cfg = preset(args.preset) if args.preset else load_config(ws.root / "config.json")
    if not (ws.filter_classifier_dir / "config.json").exists():
        raise UserError(f"no filter classifier in {ws.filter_classifier_dir} (python -m core filter-classifier)")
    threshold = cfg.selection.threshold if args.threshold is None else args.threshold
    scales = [float(s) for s in args.scales.split(",")]
    with tempfile.TemporaryDirectory(dir=ws.root.parent) as tmp:
        table = sweep(scratch_copy(ws, Path(tmp) / "sweep"), cfg, scales, args.num, threshold)
        print(f"## guidance sweep ({args.num} images per class and scale, threshold {threshold})\n")
        print(markdown_table(table.to_dict("records")))
        overall = table.groupby("guidance_scale")[["mean_p_target", "acceptance"]].mean().reset_index()
        print("\n" + markdown_table(overall.to_dict("records")))

        rows, curves = [], []
        for noise_aware in (True, False):
            variant = scratch_copy(ws, Path(tmp) / f"na-{noise_aware}")
            vcfg = replace(cfg, latent_classifier=replace(cfg.latent_classifier, noise_aware=noise_aware))
            acc = train_latent_classifier(variant, vcfg)
            curves.append(acc[["t_min", "t_max", "accuracy"]].rename(
                columns={"accuracy": "noise-aware acc" if noise_aware else "t=0-only acc"}))
            res = sweep(variant, vcfg, [args.compare_scale], args.num, threshold)
            rows.append({"classifier": "noise-aware" if noise_aware else "t=0 only (reference)",
                         "mean_p_target": res["mean_p_target"].mean(), "acceptance": res["acceptance"].mean()})
        merged = curves[0].merge(curves[1], on=["t_min", "t_max"])
        print(f"\n## latent classifier accuracy by t (validation split)\n\n{markdown_table(merged.to_dict('records'))}")
        print(f"\n## acceptance at s={args.compare_scale}\n\n{markdown_table(rows)}")


if __name__ == "__main__":
    main()
