"""Guidance in a limited interval: what it does to the filter's acceptance and to fidelity /
diversity (core.evaluate.quality), per class, against guidance at every step, and what it saves.

Arms share their seeds (the dataset's: seed + label * SEED_STRIDE + k), so each image of an arm
has a twin in every other arm made from the same initial noise: acceptance differences are paired
per seed, with their 95 % interval and the minimum detectable difference at 80 % power
(2.80 x paired SD / sqrt(n)). Works on a scratch copy of a trained workspace (the installed demo:
`from core.protocol import install_demo`); the filter classifier and its calibrated thresholds are
the workspace's, unchanged.

    python -m benchmarks.guidance_interval --workspace WS --scratch DIR [--num 200]
        [--arms "all@3;41-597@3;all@0"] [--set sampling.steps=5]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import device_name, load_note, markdown_table
from benchmarks.guidance_sweep import scratch_copy
from core.config.checks import apply_overrides
from core.config.store import load_config
from core.data.tables import load_splits
from core.evaluate.quality import measure_quality
from core.evaluate.selection import score_synthetic, select, synthetic_path
from core.generate.sampling import SEED_STRIDE, generate_images
from core.workspace import Workspace

QUALITY = ("fd", "kid", "precision", "recall", "density", "coverage", "copy_rate")


def parse_arms(text: str) -> list[tuple[str, tuple[int, ...], float]]:
    """"all@3;41-597@3" -> [(name, interval, scale)]; "all" guides every step."""
    arms = []
    for item in text.split(";"):
        span, _, scale = item.strip().partition("@")
        interval = () if span == "all" else tuple(int(v) for v in span.split("-"))
        arms.append((item.strip(), interval, float(scale)))
    return arms


def sample_arm(ws: Workspace, cfg, classes: list[str], num: int) -> tuple[list[str], dict]:
    """The arm's images and its wall and process CPU seconds per image (the machine may be shared)."""
    start, cpu, files = time.perf_counter(), time.process_time(), []
    for label, name in enumerate(classes):
        rows = generate_images(ws, cfg, name, num, seed=cfg.sampling.seed + label * SEED_STRIDE)
        files += [r["file"] for r in rows]
    n = max(1, len(files))
    return files, {"s/image": (time.perf_counter() - start) / n, "CPU s/image": (time.process_time() - cpu) / n}


def paired(kept: pd.DataFrame, arm: str, base: str) -> dict:
    """Acceptance difference arm - base over images with the same class and seed."""
    a = kept[kept["arm"] == arm].set_index(["class", "seed"])["kept"].astype(float)
    b = kept[kept["arm"] == base].set_index(["class", "seed"])["kept"].astype(float)
    d = (a - b).dropna()
    n, sd = len(d), float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "ci95": 1.96 * sd / np.sqrt(n), "mde80": 2.80 * sd / np.sqrt(n), "n": n}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workspace", required=True, type=Path)
    ap.add_argument("--scratch", required=True, type=Path, help="scratch workspace (created)")
    ap.add_argument("--num", type=int, default=200, help="images per class and arm")
    ap.add_argument("--arms", default="all@3;41-597@3;0-500@3;500-999@3;all@0",
                    help="INTERVAL@SCALE items; the first is the baseline the others are paired with")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every arm (e.g. sampling.steps=5 for a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write the tables (JSON) here")
    args = ap.parse_args(argv)
    src = Workspace(args.workspace)
    ws = scratch_copy(src, args.scratch)
    for name in ("labels.csv", "config.json"):        # the budget's labels (calibration) and its config
        if (src.root / name).exists():
            shutil.copy2(src.root / name, ws.root / name)
    base_cfg = apply_overrides(load_config(src.config_file), ["experiment.topup_rounds=0",
                                                                f"sampling.num_per_class={args.num}", *args.set])
    classes = list(load_splits(ws)[1])
    print(f"{device_name(torch.device('cpu'))}; torch threads {torch.get_num_threads()}")
    arms, files, seconds = parse_arms(args.arms), {}, {}
    for name, interval, scale in arms:
        cfg = replace(base_cfg, sampling=replace(base_cfg.sampling, guidance_interval=interval,
                                                 guidance_scale=scale)).validate()
        files[name], seconds[name] = sample_arm(ws, cfg, classes, args.num)
        print(f"{name}: {len(files[name])} images, {seconds[name]['s/image']:.2f} s/image wall, "
              f"{seconds[name]['CPU s/image']:.2f} CPU ({load_note()})", flush=True)
    score_synthetic(ws, base_cfg, reuse=True)
    kept = select(ws, base_cfg)
    arm_of = {f: name for name, fs in files.items() for f in fs}
    kept = kept[kept["file"].isin(arm_of)].assign(arm=lambda k: k["file"].map(arm_of))
    base = arms[0][0]
    rows = []
    for (name, cls), g in kept.groupby(["arm", "class"]):
        vs = {f"vs {base}": paired(kept[kept["class"] == cls], name, base)} if name != base else {}
        rows.append({"arm": name, "class": cls, "n": len(g), "accepted": float(g["kept"].mean()),
                     "mean p(target)": float(g["confidence"].mean()), **vs})
    groups = kept.assign(path=[str(synthetic_path(ws, f)) for f in kept["file"]], set=kept["arm"])
    quality = measure_quality(ws, base_cfg, groups=groups[["path", "file", "class", "guidance_scale", "set"]],
                              write=False)
    q = {(r["set"], r["class"]): r for r in quality["rows"]}
    table = []
    for r in rows:
        diff = r.pop(f"vs {base}", None)
        qr = q.get((r["arm"], r["class"]), {})
        table.append({**r, **seconds[r["arm"]], **({f"Δ accepted vs {base}": diff["diff"],
                                                              "± 95%": diff["ci95"], "MDE 80%": diff["mde80"]}
                                                             if diff else {}),
                      **{k: qr.get(k) for k in QUALITY}})
    overall = [{"arm": name, "accepted": float(kept[kept["arm"] == name]["kept"].mean()),
                **({f"Δ vs {base}": paired(kept, name, base)} if name != base else {})} for name, _, _ in arms]
    print(markdown_table(table))
    print(json.dumps(overall, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"per_class": table, "overall": overall, "floor": quality.get("floor")},
                                       indent=1, default=str))


if __name__ == "__main__":
    main()
