import math

import numpy as np
import pytest

from core.evaluate.metrics import (accuracy, balanced_accuracy, classification_metrics, confusion_matrix,
                                   macro_f1, paired_interval, per_class_recall, t_quantile)


def test_metrics_on_hand_made_predictions():
    # class 0: 3 samples, 2 right; class 1: 2 samples, 1 right; class 2: 1 sample, right.
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert accuracy(cm) == pytest.approx(4 / 6)
    assert per_class_recall(cm).tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert balanced_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: c0 p=1 r=2/3 -> 0.8; c1 p=1/2 r=1/2 -> 0.5; c2 p=1/2 r=1 -> 2/3
    assert macro_f1(cm) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_absent_class_and_never_predicted_class():
    # class 2 never occurs in y_true nor y_pred: excluded from balanced accuracy and macro-F1.
    m = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0], ["a", "b", "c"])
    assert m["accuracy"] == 0.5
    assert m["per_class_recall"] == {"a": 1.0, "b": 0.0, "c": None}
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # F1(a) = 2*2/(2+4) = 2/3, F1(b) = 0 -> mean 1/3
    assert m["macro_f1"] == pytest.approx(1 / 3)


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must be in"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="2 labels"):
        confusion_matrix([0, 1], [0], 3)


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622),
                                         (30, 2.0423), (1000, 1.9623)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_paired_interval():
    base = [0.70, 0.72, 0.68]
    aug = [0.75, 0.74, 0.74]
    out = paired_interval(base, aug)
    diffs = np.array([0.05, 0.02, 0.06])
    half = 4.3027 * diffs.std(ddof=1) / math.sqrt(3)
    assert out["mean"] == pytest.approx(diffs.mean())
    assert out["low"] == pytest.approx(diffs.mean() - half, abs=1e-4)
    assert out["high"] == pytest.approx(diffs.mean() + half, abs=1e-4)
    assert out["n"] == 3 and out["diffs"] == pytest.approx(diffs.tolist())
    single = paired_interval([0.5], [0.6])
    assert single["mean"] == pytest.approx(0.1) and single["low"] is None
    with pytest.raises(ValueError, match="one baseline per augmented"):
        paired_interval([0.1, 0.2], [0.1])


def test_min_detectable_difference_matches_a_hand_computation():
    """MDE = (t(0.975, n-1) + t(0.80, n-1)) * s / sqrt(n), quantiles from a t table."""
    from core.evaluate.metrics import min_detectable_difference, seeds_needed
    # n = 5: t(0.975, 4) = 2.7764, t(0.80, 4) = 0.9410; s = 3 points
    assert min_detectable_difference(0.03, 5) == pytest.approx((2.7764 + 0.9410) * 0.03 / math.sqrt(5), abs=1e-5)
    # n = 20: t(0.975, 19) = 2.0930, t(0.80, 19) = 0.8610
    assert min_detectable_difference(0.05, 20) == pytest.approx((2.0930 + 0.8610) * 0.05 / math.sqrt(20), abs=1e-5)
    # many seeds: the normal 1.96 + 0.84 = 2.80 of n = ((1.96 + 0.84) s / d)^2
    assert min_detectable_difference(0.04, 4000) == pytest.approx(2.8016 * 0.04 / math.sqrt(4000), rel=2e-3)
    assert min_detectable_difference(0.03, 1) is None and min_detectable_difference(None, 5) is None
    n = seeds_needed(0.03, 0.02)
    assert min_detectable_difference(0.03, n) <= 0.02 < min_detectable_difference(0.03, n - 1)


def _grid_runs():
    """Three seeds, one budget, two ratios: a baseline, a selected and an unselected arm each."""
    import json

    import pandas as pd
    rows = []
    for seed, (b, s05, s1, u1) in enumerate([(0.60, 0.62, 0.70, 0.61), (0.50, 0.55, 0.58, 0.49), (0.70, 0.69, 0.75, 0.72)]):
        common = {"label_fraction": 1.0, "seed": seed, "n_real": 10, "balanced_accuracy": 0.5, "macro_f1": 0.5,
                  "real_sequence": f"seq{seed}", "real_views_per_image": 30.0, "real_batch": 10, "steps": 30,
                  "model_selection": "validation"}
        added = lambda part, got: json.dumps({part: {"a": {"wanted": 5, "drawn": 5, "accepted": 9},  # noqa: E731
                                                     "b": {"wanted": 5, "drawn": got, "accepted": got}}})
        rows += [{**common, "arm": "baseline", "synthetic_ratio": 0.0, "accuracy": b, "n_synthetic": 0,
                  "n_pseudo": 0, "added_share": 0.0, "added_batch": 0},
                 {**common, "arm": "selected", "synthetic_ratio": 0.5, "accuracy": s05, "n_synthetic": 5, "n_pseudo": 0,
                  "added_per_class": json.dumps({"synthetic": {"a": {"wanted": 3, "drawn": 3, "accepted": 9},
                                                               "b": {"wanted": 2, "drawn": 2, "accepted": 2}}}),
                  "added_share": 1 / 3, "added_batch": 5},
                 {**common, "arm": "selected", "synthetic_ratio": 1.0, "accuracy": s1, "n_synthetic": 7, "n_pseudo": 0,
                  "added_per_class": added("synthetic", 2), "added_share": 0.41, "added_batch": 7},
                 {**common, "arm": "unselected", "synthetic_ratio": 1.0, "accuracy": u1, "n_synthetic": 7, "n_pseudo": 0,
                  "added_per_class": added("unselected", 2), "added_share": 0.41, "added_batch": 7,
                  "real_sequence": f"seq{seed}" if seed else "other"}]
    return pd.DataFrame(rows[::-1])                       # order must not matter


def test_summarize_pairs_each_arm_with_its_baseline_by_seed(tiny_cfg):
    from core.config.checks import apply_overrides
    from core.evaluate.summary import main_cell, summarize
    from core.evaluate.summary_tables import exposure_frame, markdown_table, results_frame
    cfg = apply_overrides(tiny_cfg, ["experiment.seeds=0,1,2", "experiment.synthetic_ratios=0.5,1.0",
                                     "experiment.arms=selected,unselected"])
    s = summarize(_grid_runs(), ["a", "b"], cfg, {"generated": 20, "accepted": 7})
    assert s["main_cell"] == {"label_fraction": 1.0, "synthetic_ratio": 1.0}
    cell = main_cell(s)
    assert cell["baseline"]["accuracy"]["runs"] == pytest.approx([0.60, 0.50, 0.70])
    selected = cell["arms"]["selected"]
    assert selected["metrics"]["accuracy"]["mean"] == pytest.approx((0.70 + 0.58 + 0.75) / 3)
    assert selected["metrics"]["accuracy"]["std"] == pytest.approx(np.std([0.70, 0.58, 0.75], ddof=1))
    d = selected["delta"]["accuracy"]
    assert d["diffs"] == pytest.approx([0.10, 0.08, 0.05])
    sd = np.std([0.10, 0.08, 0.05], ddof=1)
    assert d["std"] == pytest.approx(sd) and d["mde"] == pytest.approx((4.3027 + 1.0607) * sd / math.sqrt(3), abs=1e-4)
    assert selected["delta"]["macro_f1"]["mean"] == pytest.approx(0.0)
    assert selected["power"].startswith("underpowered: with 3 seeds only a difference of")
    assert selected["shortfall"] == ("ratio 1 not met for 1 class(es) after 2 top-up round(s): "
                                     "b: 2 of 5 wanted (2 accepted)")
    assert selected["realised_ratio"] == pytest.approx(0.7) and selected["status"] == "ok"
    assert selected["real_batches_match_baseline"] is True
    assert cell["arms"]["unselected"]["real_batches_match_baseline"] is False
    assert s["grid"][0]["arms"]["selected"]["shortfall"] is None and "unselected" not in s["grid"][0]["arms"]
    assert cell["model_selection"] == "validation" and s["synthetic"]["accepted"] == 7
    table = results_frame(s)
    assert table["arm"].tolist() == ["baseline", "selected", "selected", "unselected"]
    row = table[(table.arm == "selected") & (table.ratio == "1")].iloc[0]
    assert row["Δ accuracy (points)"] == "+7.7" and row["MDE (80% power)"] == f"{100 * d['mde']:.1f}"
    assert "underpowered" in row["note"] and "b: 2 of 5 wanted" in row["note"]
    assert exposure_frame(s)["real batches = baseline's"].tolist() == ["", "yes", "yes", "NO"]
    text = markdown_table(s)
    assert "0.600 ± 0.100" in text and "| selected |" in text and "Power: minimum detectable difference" in text


def test_paired_bootstrap_matches_a_plain_resampling_loop():
    from core.evaluate.metrics import balanced_accuracy, confusion_matrix, paired_bootstrap
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    base = np.where(rng.random((2, 40)) < 0.6, y, (y + 1) % 3)
    aug = np.where(rng.random((2, 40)) < 0.8, y, (y + 2) % 3)
    out = paired_bootstrap(y, base, aug, 3, resamples=300, seed=5)
    # the same resamples drawn by hand, one at a time
    draws = np.random.default_rng(5).multinomial(40, np.full(40, 1 / 40), size=300)
    acc, bal = [], []
    for counts in draws:
        idx = np.repeat(np.arange(40), counts)
        acc.append(np.mean([(aug[s][idx] == y[idx]).mean() - (base[s][idx] == y[idx]).mean() for s in range(2)]))
        bal.append(np.mean([balanced_accuracy(confusion_matrix(y[idx], aug[s][idx], 3))
                            - balanced_accuracy(confusion_matrix(y[idx], base[s][idx], 3)) for s in range(2)]))
    assert out["accuracy"]["low"] == pytest.approx(np.percentile(acc, 2.5))
    assert out["accuracy"]["high"] == pytest.approx(np.percentile(acc, 97.5))
    assert out["balanced_accuracy"]["low"] == pytest.approx(np.percentile(bal, 2.5))
    assert out["balanced_accuracy"]["high"] == pytest.approx(np.percentile(bal, 97.5))
    assert out["accuracy"]["low"] > 0                       # aug is right on clearly more images
    same = paired_bootstrap(y, base, base, 3, resamples=50)
    assert same["accuracy"] == {"low": 0.0, "high": 0.0}


def test_chance_margin_flags_a_majority_class_predictor():
    from core.evaluate.metrics import at_chance, chance_margin
    assert chance_margin(3, 12) == pytest.approx(2 * np.sqrt(1 / 3 * 2 / 3 / 12))
    assert at_chance(0.333, 3, 120) and at_chance(None, 3, 12) and at_chance(float("nan"), 2, 10)
    assert not at_chance(0.9, 3, 12) and not at_chance(0.45, 3, 1000)
