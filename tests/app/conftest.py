"""A tiny but real lab workspace for the app tests: demo data (tiny preset), untrained tiny models
saved in their diffusers formats, a real synthetic set sampled with them, stored scores and a
results table made here (the scorer and the experiment have their own tests)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.config.store import save_config
from core.config.presets import preset
from ldm_fixtures import lay_untrained_models


def write_scores(ws, seed: int = 0) -> pd.DataFrame:
    """scores.csv over the real synthetic manifest with spread-out confidences."""
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv")
    rng = np.random.default_rng(seed)
    scores = manifest.assign(confidence=np.linspace(0.05, 0.95, len(manifest))[rng.permutation(len(manifest))],
                             nearest_class=manifest["class"], centroid_distance=rng.random(len(manifest)),
                             predicted_class=manifest["class"], error="")
    scores.to_csv(ws.synthetic_dir / "scores.csv", index=False)
    return scores


def write_runs(ws, cfg, classes) -> pd.DataFrame:
    """runs.csv with the columns core.protocol.experiment writes, and the summary core writes from it."""
    from core.protocol.experiment import write_summary
    rows = []
    for seed in (0, 1):
        for arm, ratio, acc in (("baseline", 0.0, 0.6), ("selected", 1.0, 0.7)):
            cm = np.eye(len(classes), dtype=int) * 5 + 1
            rows.append({"run_key": f"{arm}{seed}", "arm": arm, "label_fraction": 1.0,
                         "synthetic_ratio": ratio, "seed": seed, "accuracy": acc + 0.02 * seed,
                         "balanced_accuracy": acc, "macro_f1": acc,
                         **{f"recall_{c}": acc for c in classes},
                         "n_real": 40, "n_synthetic": int(40 * ratio), "steps": 24,
                         "confusion_matrix": json.dumps(cm.tolist())})
    runs = pd.DataFrame(rows)
    ws.results_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(ws.runs_csv, index=False)
    write_summary(ws, cfg, runs, list(classes), None, planned=len(runs))
    return runs


@pytest.fixture(scope="session")
def lab_cfg():
    from dataclasses import replace
    cfg = preset("tiny")
    # fp32 keeps the tiny runs deterministic and avoids bf16 autocast overhead on tiny tensors
    return replace(cfg, sampling=replace(cfg.sampling, mixed_precision="no", steps=2))


@pytest.fixture(scope="session")
def lab_workspace(tmp_path_factory, lab_cfg):
    from core.data.tables import load_splits
    from core.data.demo import build_demo
    from core.generate.sampling import generate_images
    from core.workspace import Workspace
    ws = Workspace(tmp_path_factory.mktemp("lab_ws")).ensure()
    build_demo(ws, lab_cfg)
    save_config(lab_cfg, ws.root)
    classes = load_splits(ws)[1]
    lay_untrained_models(ws, lab_cfg, classes)
    for i, name in enumerate(classes):
        generate_images(ws, lab_cfg, name, num=3, seed=100 * i, guidance_scale=1.0, steps=2)
    write_scores(ws)
    write_runs(ws, lab_cfg, classes)
    return ws


@pytest.fixture
def lab_ctx(lab_workspace, tmp_path):
    from app.context import AppContext
    extra = tmp_path / "data_root"
    extra.mkdir()
    return AppContext.create(lab_workspace.root, [extra])
