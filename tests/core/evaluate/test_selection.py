import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from core.config.checks import apply_overrides
from core.io import read_png_params
from core.commands.select import cli
from core.evaluate.selection import (acceptance_curve, apply_threshold, export_accepted, load_scores,
                                     score_synthetic)
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


def test_quota_and_curve_on_1000_rows():
    """Their speed (the slider re-filters on every move) is measured by benchmarks/filter_speed.py."""
    rng = np.random.default_rng(0)
    n = 1000
    scores = pd.DataFrame({"file": [f"{i}.png" for i in range(n)],
                           "class": rng.choice(list("abcdefghi"), n),
                           "confidence": rng.random(n), "nearest_class": rng.choice(list("abcdefghi"), n),
                           "centroid_distance": rng.random(n)})
    kept = apply_threshold(scores, 0.5, quota_per_class=30)
    assert kept.groupby("class")["kept"].sum().max() <= 30
    nearest = apply_threshold(scores, 0.5, strategy="centroid", quota_per_class=30)
    assert nearest.groupby("class")["kept"].sum().max() <= 30
    curve = acceptance_curve(scores, np.linspace(0, 1, 21))
    all_rows = curve[curve["class"] == "all"]
    assert all_rows["accepted"].iloc[0] == n and all_rows["accepted"].is_monotonic_decreasing
    assert all_rows["rate"].iloc[10] == pytest.approx((scores.confidence >= 0.5).mean())


def test_score_filter_export_end_to_end(tmp_path, tiny_cfg):
    from core.train.filter_classifier import train_filter_classifier
    ws = Workspace(tmp_path / "ws").ensure()
    cfg = apply_overrides(tiny_cfg, ["filter_classifier.steps=18", "downstream.steps=18", "filter_classifier.batch_size=8", "downstream.batch_size=8", "filter_classifier.lr=0.01", "downstream.lr=0.01"])
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


# --- per-class thresholds calibrated on validation ----------------------------------------------

def test_per_class_thresholds_override_the_global_one_for_their_classes():
    out = apply_threshold(table(), 0.9, per_class={"b": 0.05})
    assert out["kept"].tolist() == [True, False, True, True, True, False]    # a at 0.9, b at 0.05; NaN never
    assert out["threshold"].tolist() == [0.9, 0.9, 0.9, 0.05, 0.05, 0.05]
    assert apply_threshold(table(), 0.9)["kept"].tolist() == [True, False, True, False, False, False]
    assert apply_threshold(table(), 0.9, strategy="centroid", per_class={"b": 0.05})["threshold"].isna().all()
    with pytest.raises(UserError, match=r"selection.threshold \(class b\)"):
        apply_threshold(table(), 0.9, per_class={"b": 1.5})


def test_calibration_rule_caps_and_falls_back_with_no_constant_floor():
    """Each bar is what the class's real validation images pass (their quantile), capped by the
    global one; no constant floor lifts or replaces it (a hard class keeps its own 0.2)."""
    from core.evaluate.selection import MIN_VAL_IMAGES, thresholds_at
    raw = pd.DataFrame({"class": ["mid", "easy", "hard", "few"], "val_quantile": [0.7, 0.97, 0.2, 0.3],
                        "n_val_images": [20, 20, 20, MIN_VAL_IMAGES - 1], "quantile": 0.1})
    out = thresholds_at(raw, 0.9).set_index("class")
    assert out["threshold"].to_dict() == {"mid": 0.7, "easy": 0.9, "hard": 0.2, "few": 0.9}
    assert out.loc["mid", "rule"] == "q0.1 of 20 val images = 0.700"
    assert out.loc["hard", "rule"] == "q0.1 of 20 val images = 0.200"
    assert out.loc["easy", "rule"] == "global (q0.1 of 20 val images = 0.970 is not below it)"
    assert out.loc["few", "rule"] == f"global (fallback: {MIN_VAL_IMAGES - 1} val images, fewer than {MIN_VAL_IMAGES})"
    assert thresholds_at(raw, 0.6).set_index("class")["threshold"].to_dict() == \
        {"mid": 0.6, "easy": 0.6, "hard": 0.2, "few": 0.6}                # the global bar is the cap
    assert thresholds_at(raw, 0.1)["threshold"].tolist() == [0.1] * 4


def test_calibration_config_fields_keep_existing_keys_and_are_checked(tiny_cfg):
    from core.errors import ConfigError
    from core.config.lab_config import SelectionConfig
    from core.config.store import identity
    from core.config.store import from_dict, to_dict
    saved = to_dict(tiny_cfg)
    for name in ("calibration", "calibration_quantile", "realism"):     # a config saved before them
        saved["selection"].pop(name)
    legacy = from_dict(saved).selection
    assert legacy.realism == () and set(identity(legacy)) == {"strategy", "threshold", "quota_per_class"}
    assert set(identity(SelectionConfig())) == {"strategy", "threshold", "quota_per_class", "realism"}
    on = apply_overrides(tiny_cfg, ["selection.calibration=validation"])
    assert identity(on.selection)["calibration"] == "validation"
    with pytest.raises(ConfigError, match="selection.calibration must be none|validation"):
        apply_overrides(tiny_cfg, ["selection.calibration=test"])
    with pytest.raises(ConfigError, match="selection.calibration_quantile must be in"):
        apply_overrides(tiny_cfg, ["selection.calibration_quantile=1.5"])
    with pytest.raises(ConfigError, match="centroid"):
        apply_overrides(tiny_cfg, ["selection.calibration=validation", "selection.strategy=centroid"])


def test_calibration_reads_the_budgets_validation_images_only(tmp_path, tiny_cfg):
    """Thresholds come from the filter classifier's p(target) on the budget's real validation
    images: relabelling and redrawing every test image changes nothing; relabelling one
    validation image does; a budget that leaves < 5 validation images per class falls back."""
    from core.train.filter_classifier import train_filter_classifier
    from core.evaluate.selection import calibrate, load_thresholds, select
    from labdata import tile
    ws = Workspace(tmp_path / "ws").ensure()
    cfg = apply_overrides(tiny_cfg, ["filter_classifier.steps=18", "downstream.steps=18", "filter_classifier.batch_size=8", "downstream.batch_size=8", "filter_classifier.lr=0.01", "downstream.lr=0.01",
                                     "selection.threshold=0.95", "selection.calibration=validation",
                                     "selection.calibration_quantile=0.5"])
    splits = make_splits(ws)
    make_synthetic(ws)
    train_filter_classifier(ws, cfg)
    score_synthetic(ws, cfg)                      # writes thresholds.csv beside the scores
    first = load_thresholds(ws)
    assert first["n_val_images"].tolist() == [6, 6] and first["class"].tolist() == ["tumor", "stroma"]
    assert (first["threshold"] <= 0.95).all() and first["rule"].str.startswith(("q0.5 of 6", "global (q")).all()
    val = pd.read_csv(ws.val_scores)
    assert set(val["file"]) == set(splits.loc[splits.split == "val", "path"])

    # every test image redrawn in the other class's colour and relabelled: nothing moves
    rng, test = np.random.default_rng(5), splits.split == "test"
    for i in splits.index[test]:
        path = ws.labeled_dir / "test_other" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tile(rng, 1 - int(splits.at[i, "label"])).save(path)
        splits.loc[i, ["path", "label", "class_name"]] = [str(path), 1 - splits.at[i, "label"],
                                                          ["tumor", "stroma"][1 - splits.at[i, "label"]]]
    splits.to_csv(ws.split_manifest, index=False)
    ws.val_scores.unlink()
    ws.selection_thresholds.unlink()
    pd.testing.assert_frame_equal(calibrate(ws, cfg), first)

    # the accepted set is decided with these thresholds
    kept = select(ws, cfg)
    bars = kept["class"].map(first.set_index("class")["threshold"])
    assert kept["kept"].tolist() == (kept["confidence"] >= bars).tolist()
    assert kept["threshold"].tolist() == pytest.approx(bars.tolist())

    # one validation image relabelled: the calibration sees it (so the test above can fail)
    moved = splits.index[(splits.split == "val") & (splits.class_name == "tumor")][0]
    splits.loc[moved, ["label", "class_name"]] = [1, "stroma"]
    splits.to_csv(ws.split_manifest, index=False)
    assert calibrate(ws, cfg)["n_val_images"].tolist() == [5, 7]

    # a budget of a third leaves 2 validation images per class: the global threshold, said so
    third = apply_overrides(cfg, ["experiment.label_fractions=0.33"])
    few = calibrate(ws, third)
    assert few["threshold"].tolist() == [0.95, 0.95]
    assert few["rule"].str.startswith("global (fallback: 2 val images").all()
