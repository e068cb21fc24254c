"""Guidance auto-tune on the bundled demo with a stand-in sampler whose output per scale is known:
s=0 uniform noise, s=1 real images of the class the generator never saw (test tiles), s=10 exact copies of training images.
The objective must pick 1 where it is eligible (10 scores higher on acceptance x coverage for
some classes but is all copies), and never 10."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.config.checks import apply_overrides
from core.config.store import load_config
from core.io import save_png
from core.workspace import Workspace

BUNDLE = Path(__file__).resolve().parents[3] / "assets" / "demo_models"


@pytest.fixture
def demo(tmp_path):
    from core.protocol.demo_models import install_demo
    ws = Workspace(tmp_path / "ws")
    install_demo(BUNDLE, ws)
    for table in (ws.synthetic_manifest, ws.synthetic_scores):
        pd.read_csv(table).groupby("class").head(12).to_csv(table, index=False)
    return ws


def fake_generate(ws, cfg, class_name, num, seed, guidance_scale=None, stop=None, **_):
    from core.data.tables import load_splits
    from core.generate.sampling import _append_rows
    splits, _ = load_splits(ws)
    mine = splits[splits["class_name"] == class_name]
    # val tiles pre-train the demo generator (data.pool_labeled_images): unseen real ones are test tiles
    source = {1.0: mine[mine["split"] == "test"]["path"], 10.0: mine[mine["split"] == "train"]["path"]}
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(num):
        if guidance_scale == 0:
            image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        else:
            image = Image.open(list(source[guidance_scale])[k]).convert("RGB")
        row = {"file": f"{class_name}/{class_name}-seed{seed + k}-s{guidance_scale:g}.png", "class": class_name,
               "label": 0, "seed": seed + k, "guidance_scale": guidance_scale, "steps": cfg.sampling.steps,
               "scheduler": "ddim", "eta": 1.0, "unet_hash": "x", "vae_hash": "x", "classifier_hash": "x"}
        save_png(image, ws.synthetic_dir / row["file"], row)
        rows.append(row)
    _append_rows(ws.synthetic_manifest, rows)
    return rows


def test_tune_picks_the_best_scale_under_the_copy_ceiling_and_writes_it(demo, monkeypatch):
    import core.generate.sampling
    from core.evaluate.quality_metrics import K_NEIGHBOURS
    from core.protocol.tune import tune_guidance
    monkeypatch.setattr(core.generate.sampling, "generate_images", fake_generate)
    monkeypatch.setattr("core.evaluate.quality_metrics.KID_SUBSETS", 10)
    cfg = apply_overrides(load_config(demo.root / "config.json"), ["selection.threshold=0.5"])
    out = tune_guidance(demo, cfg, grid=(0, 1, 10), num=2 * K_NEIGHBOURS + 2)
    table = out["table"].set_index(["class", "guidance_scale"])
    classes = sorted(out["table"]["class"].unique())
    for cls in classes:
        assert table.loc[(cls, 10.0), "copy_rate"] == 1.0 and not table.loc[(cls, 10.0), "eligible"]
        assert table.loc[(cls, 0.0), "coverage"] < 0.2          # noise: (almost) no real image covered
    cols = ["acceptance", "coverage", "copy_rate", "floor_copy_rate", "objective", "eligible"]
    for cls in classes:
        assert out["choices"].get(cls) != 10.0, table[cols].to_string()   # copies are never picked
        rows = table.loc[cls]
        ok = rows[rows["eligible"] & (rows["objective"] > 0)]
        if len(ok):
            assert out["choices"][cls] == ok["objective"].idxmax(), table[cols].to_string()
        else:                                   # nothing accepted anywhere: no pick, scale kept
            assert cls not in out["choices"] and cls in out["no_eligible"]
    # held-out real images win where they do not trip the copy ceiling (with 12 images, 3 of the
    # demo's blank backgrounds may land under the copy threshold)
    assert sum(out["choices"].get(c) == 1.0 for c in classes) >= 3, table[cols].to_string()
    saved = load_config(demo.root / "config.json")
    assert saved.sampling.class_scales() == out["choices"]
    assert saved.selection.threshold == load_config(BUNDLE / "config.json").selection.threshold   # --set not saved
    sweep = pd.read_csv(demo.guidance_sweep_csv)
    assert len(sweep) == 3 * len(classes) and sweep["chosen"].sum() == len(out["choices"])
    assert sweep["features"].str.startswith("filter classifier").all()
