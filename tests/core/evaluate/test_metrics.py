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


def test_summarize_pairs_by_seed_and_flags_shortfall(tiny_cfg):
    import pandas as pd

    from core.config.checks import apply_overrides
    from core.evaluate.summary import markdown_table, summarize
    cfg = apply_overrides(tiny_cfg, ["experiment.seeds=0,1,2", "experiment.synthetic_ratios=0.5,1.0"])
    rows = []
    for seed, (b, a05, a1) in enumerate([(0.60, 0.62, 0.70), (0.50, 0.55, 0.58), (0.70, 0.69, 0.75)]):
        common = {"label_fraction": 1.0, "seed": seed, "n_real": 10, "balanced_accuracy": 0.5, "macro_f1": 0.5}
        rows += [{**common, "arm": "baseline", "synthetic_ratio": 0.0, "accuracy": b,
                  "n_synthetic": 0, "n_synthetic_wanted": 0},
                 {**common, "arm": "augmented", "synthetic_ratio": 0.5, "accuracy": a05,
                  "n_synthetic": 5, "n_synthetic_wanted": 5,
                  "synthetic_per_class": '{"a": {"wanted": 5, "drawn": 5, "accepted": 9}}'},
                 {**common, "arm": "augmented", "synthetic_ratio": 1.0, "accuracy": a1,
                  "n_synthetic": 7, "n_synthetic_wanted": 10,
                  "synthetic_per_class": '{"a": {"wanted": 5, "drawn": 5, "accepted": 9}, '
                                         '"b": {"wanted": 5, "drawn": 2, "accepted": 2}}'}]
    runs = pd.DataFrame(rows[::-1])                       # order must not matter
    s = summarize(runs, ["a", "b"], cfg, {"generated": 20, "accepted": 7})
    assert s["main_cell"] == {"label_fraction": 1.0, "synthetic_ratio": 1.0}
    assert s["baseline"]["accuracy"]["runs"] == pytest.approx([0.60, 0.50, 0.70])
    assert s["augmented"]["accuracy"]["mean"] == pytest.approx((0.70 + 0.58 + 0.75) / 3)
    assert s["augmented"]["accuracy"]["std"] == pytest.approx(np.std([0.70, 0.58, 0.75], ddof=1))
    assert s["delta"]["accuracy"]["diffs"] == pytest.approx([0.10, 0.08, 0.05])
    assert s["delta"]["macro_f1"]["mean"] == pytest.approx(0.0)
    assert s["grid"][1]["shortfall"] == ("ratio 1 not met for 1 class(es) after 2 top-up round(s): "
                                         "b: 2 of 5 wanted (2 accepted)") and s["grid"][0]["shortfall"] is None
    assert s["grid"][1]["realised_ratio"] == pytest.approx(0.7) and s["grid"][0]["status"] == "ok"
    assert s["synthetic"]["accepted"] == 7 and list(s["config"]["experiment"]["seeds"]) == [0, 1, 2]
    table = markdown_table(s)
    assert "0.600 ± 0.100" in table and "b: 2 of 5 wanted" in table and "1 (0.70)" in table


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
