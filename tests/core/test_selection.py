import time

import numpy as np
import pandas as pd
import pytest

from core.cli import UserError
from core.config import apply_overrides
from core.io import read_png_params
from core.commands.filter import cli
from core.selection import acceptance_curve, apply_threshold, export_accepted, load_scores, score_synthetic
from core.workspace import Workspace
from labdata import make_splits, make_synthetic


def table():
    return pd.DataFrame({
        "file": [f"f{i}.png" for i in range(6)],
        "class": ["a", "a", "a", "b", "b", "b"],
        "confidence": [0.95, 0.50, 0.99, 0.10, 0.80, np.nan],
        "nearest_class": ["a", "b", "a", "b", "b", ""],
        "centroid_distance": [0.30, 0.10, 0.20, 0.05, 0.40, np.nan],
    })


def test_threshold_rule_and_quota_keep_most_confident():
    out = apply_threshold(table(), 0.6)
    assert out["kept"].tolist() == [True, False, True, False, True, False]   # NaN never kept
    q = apply_threshold(table(), 0.6, quota_per_class=1)
    assert q["kept"].tolist() == [False, False, True, False, True, False]    # 0.99 beats 0.95


def test_centroid_rule_keeps_nearest_first():
    out = apply_threshold(table(), 0.99, strategy="centroid")
    assert out["kept"].tolist() == [True, False, True, True, True, False]
    q = apply_threshold(table(), 0.0, strategy="centroid", quota_per_class=1)
    assert q["kept"].tolist() == [False, False, True, True, False, False]    # smallest distance


def test_bad_rule_arguments_name_the_field():
    with pytest.raises(UserError, match="selection.strategy"):
        apply_threshold(table(), 0.5, strategy="best")
    with pytest.raises(UserError, match="selection.threshold"):
        apply_threshold(table(), 1.5)


def test_apply_threshold_and_curve_are_fast_on_1000_rows():
    rng = np.random.default_rng(0)
    n = 1000
    scores = pd.DataFrame({"file": [f"{i}.png" for i in range(n)],
                           "class": rng.choice(list("abcdefghi"), n),
                           "confidence": rng.random(n), "nearest_class": rng.choice(list("abcdefghi"), n),
                           "centroid_distance": rng.random(n)})
    t0 = time.perf_counter()
    kept = apply_threshold(scores, 0.5, quota_per_class=30)
    apply_threshold(scores, 0.5, strategy="centroid", quota_per_class=30)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.3, elapsed
    assert kept.groupby("class")["kept"].sum().max() <= 30
    curve = acceptance_curve(scores, np.linspace(0, 1, 21))
    all_rows = curve[curve["class"] == "all"]
    assert all_rows["accepted"].iloc[0] == n and all_rows["accepted"].is_monotonic_decreasing
    assert all_rows["rate"].iloc[10] == pytest.approx((scores.confidence >= 0.5).mean())


def test_score_filter_export_end_to_end(tmp_path, tiny_cfg):
    from core.classify import train_filter_classifier
    ws = Workspace(tmp_path / "ws").ensure()
    cfg = apply_overrides(tiny_cfg, ["classify.steps=18", "classify.batch_size=8", "classify.lr=0.01"])
    make_splits(ws)
    make_synthetic(ws)
    (ws.synthetic_dir / "tumor" / "tumor-0005.png").write_bytes(b"\x89PNG broken")   # corrupt file
    train_filter_classifier(ws, cfg)
    scores = score_synthetic(ws, cfg)
    assert len(scores) == 12 and (ws.synthetic_dir / "scores.csv").exists()
    broken = scores[scores.file == "tumor/tumor-0005.png"].iloc[0]
    assert broken["error"] and np.isnan(broken["confidence"])
    good = scores[scores.error == ""]
    # images drawn in their own colour (even index) are far more confident than the others
    own = good[good.file.str.extract(r"-(\d+)\.png")[0].astype(int) % 2 == 0]
    other = good[good.file.str.extract(r"-(\d+)\.png")[0].astype(int) % 2 == 1]
    assert own.confidence.mean() > other.confidence.mean() + 0.1
    assert (own.nearest_class == own["class"]).mean() > (other.nearest_class == other["class"]).mean()
    stored = load_scores(ws)
    assert stored["confidence"].tolist() == pytest.approx(scores["confidence"].tolist(), nan_ok=True)

    kept = apply_threshold(stored, 0.5)
    out = export_accepted(ws, kept)
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == kept["kept"].sum() > 0
    assert {"file", "class", "seed", "guidance_scale", "steps", "scheduler", "eta", "unet_hash",
            "confidence", "centroid_distance", "kept"} <= set(manifest.columns)
    first = manifest.iloc[0]
    params = read_png_params(out / first["file"])
    assert params["seed"] == first["seed"] and params["confidence"] == pytest.approx(first["confidence"])
    assert {p.name for p in out.iterdir() if p.is_dir()} <= {"tumor", "stroma"}

    # a kept image damaged after scoring is skipped and listed, the rest exported
    first_kept = kept[kept["kept"]].iloc[0]["file"]
    (ws.synthetic_dir / first_kept).write_bytes(b"gone")
    out2 = export_accepted(ws, kept, tmp_path / "export2")
    assert len(pd.read_csv(out2 / "manifest.csv")) == kept["kept"].sum() - 1
    assert pd.read_csv(out2 / "skipped.csv")["file"].tolist() == [first_kept]

    # CLI re-filters from stored scores into another folder
    rc = cli(["--workspace", str(ws.root), "--preset", "tiny", "--threshold", "0.0", "--quota", "2",
              "--out", str(tmp_path / "export")])
    assert rc == 0
    top2 = apply_threshold(stored, 0.0, quota_per_class=2)
    expected = 4 - int(first_kept in set(top2.loc[top2["kept"], "file"]))   # the damaged one is left out
    assert len(pd.read_csv(tmp_path / "export" / "manifest.csv")) == expected
