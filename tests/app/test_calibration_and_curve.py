"""The Selection tab shows core's per-class calibrated thresholds, and the
results tab draws accuracy against the label budget from summary.json alone."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import charts, tab_results, tab_selection
from app.context import AppContext

BUNDLE_SUMMARY = Path(__file__).resolve().parents[2] / "assets" / "demo_models" / "results" / "summary.json"


def _scored_workspace(tmp_path, overrides=("selection.calibration=validation",)) -> AppContext:
    ctx = AppContext.create(tmp_path / "ws", preset_name="tiny", overrides=list(overrides))
    conf = {"a": [0.55, 0.65, 0.75, 0.85, 0.95, 0.97], "b": [0.6, 0.8, 0.92, 0.99]}
    rows = [{"file": f"{c}/{c}-{i}.png", "class": c, "confidence": v, "nearest_class": c,
             "centroid_distance": 0.1, "filter_hash": "h1", "error": ""}
            for c, values in conf.items() for i, v in enumerate(values)]
    ctx.workspace.synthetic_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(ctx.workspace.synthetic_scores, index=False)
    return ctx


def _write_thresholds(ctx: AppContext, filter_hash: str = "h1") -> None:
    """synthetic/thresholds.csv as core.evaluate.selection.calibrate writes it: class a from 10 validation
    images (its quantile 0.6), class b from 3 (too few: the global threshold)."""
    from core.evaluate.selection import THRESHOLD_COLUMNS, thresholds_at
    raw = pd.DataFrame({"class": ["a", "b"], "val_quantile": [0.6, 0.7], "n_val_images": [10, 3],
                        "quantile": ctx.config.selection.calibration_quantile, "filter_hash": filter_hash})
    thresholds_at(raw, ctx.config.selection.threshold)[THRESHOLD_COLUMNS] \
        .to_csv(ctx.workspace.selection_thresholds, index=False)


def _lines(plot) -> dict[str, float]:
    return {s.get("name"): s["x0"] for s in json.loads(plot.plot)["layout"]["shapes"]}


def test_selection_tab_applies_and_shows_each_classs_calibrated_threshold(tmp_path):
    ctx = _scored_workspace(tmp_path)
    summary, counts, _, hist, curve = tab_selection.refilter(ctx, 0.9, "threshold", 0)
    assert "is not written yet" in summary and "calibrated on" not in summary     # said, not hidden
    assert counts.set_index("class").loc["a", "accepted"] == 2                     # the global 0.9 meanwhile

    _write_thresholds(ctx)
    summary, counts, gallery, hist, curve = tab_selection.refilter(ctx, 0.9, "threshold", 0, "accepted",
                                                                   tab_selection.ALL, 64)
    assert "per-class thresholds calibrated on 13 validation images" in summary
    table = counts.set_index("class")
    assert table.loc["a", "accepted"] == 5 and table.loc["a", "threshold"] == 0.6     # >= 0.6
    assert table.loc["b", "accepted"] == 2 and table.loc["b", "threshold"] == 0.9     # fallback: global
    assert "fallback: 3 val images" in table.loc["b", "rule"] and table.loc["all", "accepted"] == 7
    assert len(gallery) == 7
    assert _lines(hist) == {"a": 0.6, "b": 0.9}                   # each class's own line
    assert _lines(curve) == {"a": 0.6, "b": 0.9, "all": 0.9}

    # the slider is the cap of every class's threshold (core.evaluate.selection.thresholds_at)
    summary, counts, _, hist, _ = tab_selection.refilter(ctx, 0.5, "threshold", 0)
    assert counts.set_index("class").loc[["a", "b"], "threshold"].tolist() == [0.5, 0.5]
    assert "at most the slider's 0.50" in summary
    assert _lines(hist) == {"a": 0.5, "b": 0.5}

    # thresholds of another filter classifier are not applied, and the tab says so
    scores = pd.read_csv(ctx.workspace.synthetic_scores).assign(filter_hash="h2")
    scores.to_csv(ctx.workspace.synthetic_scores, index=False)
    summary, counts, *_ = tab_selection.refilter(ctx, 0.9, "threshold", 0)
    assert "from another filter classifier" in summary and counts.set_index("class").loc["a", "accepted"] == 2


def test_selection_tab_without_calibration_is_unchanged(tmp_path):
    ctx = _scored_workspace(tmp_path, overrides=())
    _write_thresholds(ctx)                      # a table on disk is not applied when the config says none
    summary, counts, _, hist, _ = tab_selection.refilter(ctx, 0.9, "threshold", 0)
    assert "calibrat" not in summary      # the scores carry no realism column: those checks are not counted
    assert list(counts.columns) == ["class", "accepted", "rejected", "total", "pass confidence", "pass centroid"]
    assert counts.set_index("class").loc["a", "accepted"] == 2 and _lines(hist) == {"a": 0.9, "b": 0.9}


def test_accuracy_curve_reads_the_bundled_summary():
    from core.evaluate.summary import cell_arms
    summary = json.loads(BUNDLE_SUMMARY.read_text())
    table = tab_results.curve_table(summary)
    budgets = sorted({c["label_fraction"] for c in summary["grid"]})
    assert len(budgets) >= 2
    for cell in summary["grid"]:
        at = table[table["label_fraction"] == cell["label_fraction"]]
        base = at[at["arm"] == "baseline"].iloc[0]
        assert (base["mean"], base["std"]) == (cell["baseline"]["accuracy"]["mean"], cell["baseline"]["accuracy"]["std"])
        for arm, a in cell_arms(cell).items():
            row = at[(at["arm"] == arm) & (at["synthetic_ratio"] == cell["synthetic_ratio"])].iloc[0]
            assert (row["mean"], row["std"]) == (a["metrics"]["accuracy"]["mean"], a["metrics"]["accuracy"]["std"])
            assert (row["delta"], row["delta_low"], row["delta_high"]) == \
                tuple(a["delta"]["accuracy"][k] for k in ("mean", "low", "high"))
            assert (row["boot_low"], row["boot_high"]) == \
                (a["bootstrap"]["accuracy"]["low"], a["bootstrap"]["accuracy"]["high"])
    fig = charts.accuracy_curve(table, tab_results.budget_axis(summary)[1])
    traces = {t.name: t for t in fig.data}
    base = traces["baseline (real only)"]
    assert list(base.x) == budgets and base.xaxis == "x"                      # a line over the budgets
    by_budget = {c["label_fraction"]: c for c in summary["grid"] if c["synthetic_ratio"] == 1}
    assert list(base.error_y.array) == [by_budget[b]["baseline"]["accuracy"]["std"] for b in budgets]
    seeds = traces["Δ selected (×1 asked): 95% CI over seeds"]
    images = traces["Δ selected (×1 asked): 95% CI over test images"]
    assert seeds.xaxis == images.xaxis == "x2"                                # the second subplot
    selected = [cell_arms(by_budget[b])["selected"] for b in budgets]
    low = [a["delta"]["accuracy"]["low"] for a in selected]
    assert np.allclose(np.asarray(seeds.y) - np.asarray(seeds.error_y.arrayminus), low)
    boot_high = [a["bootstrap"]["accuracy"]["high"] for a in selected]
    assert np.allclose(np.asarray(images.y) + np.asarray(images.error_y.array), boot_high)
    # each budget's intervals sit inside that budget's slot, the seeds' left of the test images'
    assert all(i - 0.5 < x < i + 0.5 for i, x in enumerate(seeds.x)) and all(np.asarray(seeds.x) < np.asarray(images.x))
    assert "95% CI" in seeds.hovertext[0] and "test images" in seeds.hovertext[0]
    assert not any("no curve" in a.text for a in fig.layout.annotations)
    assert fig.layout.xaxis.type == "log"


def test_one_budget_still_renders_and_says_it_is_no_curve():
    summary = json.loads(BUNDLE_SUMMARY.read_text())
    one = copy.deepcopy(summary)
    one["grid"] = [c for c in one["grid"] if c["label_fraction"] == 0.25]
    fig = charts.accuracy_curve(tab_results.curve_table(one), tab_results.budget_axis(one)[1])
    assert {len(t.x) for t in fig.data} == {1}
    notes = [a.text for a in fig.layout.annotations]
    assert any("one label budget (labels 25%) gives no curve" in n for n in notes)
    fig.to_json()                                                            # serializable: it renders


def test_budgets_in_images_per_class_and_a_not_ok_cell():
    from core.evaluate.summary import cell_arms
    summary = json.loads(BUNDLE_SUMMARY.read_text())
    counts = copy.deepcopy(summary)
    for cell, n in zip(counts["grid"], (20, 50)):
        cell["label_fraction"] = n
    counts["grid"] = counts["grid"][:2]
    not_ok = "no images added: the arm equals the baseline, not a result"
    if "arms" in counts["grid"][0]:
        counts["grid"][0]["arms"]["selected"]["status"] = not_ok
    else:                                           # a summary of the older layout keeps it in the cell
        counts["grid"][0]["status"] = not_ok
    x_key, title = tab_results.budget_axis(counts)
    assert "images per class" in title
    fig = charts.accuracy_curve(tab_results.curve_table(counts), title)
    traces = {t.name: t for t in fig.data}
    assert list(traces["baseline (real only)"].x) == [20.0, 50.0]
    ratios = [c["synthetic_ratio"] for c in counts["grid"]]
    assert list(traces[f"selected (×{ratios[0]:g} asked)"].marker.symbol)[0] == "x"
    assert list(traces[f"selected (×{ratios[1]:g} asked)"].marker.symbol)[-1] == "circle"
    assert any("not a result" in a.text for a in fig.layout.annotations)


def test_results_tab_shows_the_curve(lab_ctx):
    out = tab_results.refresh(lab_ctx)
    fig = out[3]
    assert fig.layout.xaxis2 is not None and len(fig.data) == 4               # 2 arms + 2 intervals
    assert any("gives no curve" in a.text for a in fig.layout.annotations)    # the fixture has one budget


def test_empty_results_show_a_hint_curve(tmp_path):
    ctx = AppContext.create(tmp_path / "empty", preset_name="tiny")
    out = tab_results.refresh(ctx)
    assert "No results" in out[2] and any("no results yet" in a.text for a in out[3].layout.annotations)


@pytest.mark.parametrize("threshold", [0.3, 0.95])
def test_histogram_lines_move_per_class(threshold):
    scores = pd.DataFrame({"class": ["a", "b"], "confidence": [0.4, 0.9]})
    fig = charts.confidence_histograms(scores, threshold, ["a", "b"], {"a": 0.2})
    moved = charts.move_threshold(fig, threshold, {"a": 0.25})
    assert {s.name: s.x0 for s in moved.layout.shapes} == {"a": 0.25, "b": threshold}
