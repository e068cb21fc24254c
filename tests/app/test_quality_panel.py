"""Tab 2's quality-vs-scale chart and tab 3's nearest-neighbour panel, on result tables written here
(core.evaluate.quality and core.protocol.tune have their own tests)."""
from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from app import charts, quality_panel, tab_selection
from app.context import AppContext


@pytest.fixture
def results_ctx(tmp_path):
    """A workspace with two synthetic images of class a, their nearest real image, and the quality
    tables core writes (per class and scale, with real-vs-real floors)."""
    ctx = AppContext.create(tmp_path / "ws")
    ws = ctx.workspace
    for name in ("a-seed0-s1.png", "a-seed1-s1.png"):
        (ws.synthetic_dir / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(ws.synthetic_dir / "a" / name)
    real = tmp_path / "real.png"
    Image.new("RGB", (8, 8), "blue").save(real)
    ws.results_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"file": ["a/a-seed0-s1.png", "a/a-seed1-s1.png"], "class": "a", "guidance_scale": 1.0,
                  "nn_path": str(real), "nn_distance": [0.0, 2.0], "ratio": [0.0, 1.5],
                  "likely_copy": [True, False]}).to_csv(ws.quality_images_csv, index=False)
    rows = [{"set": "all", "class": c, "guidance_scale": s, "n": 20, "n_eval": 20, "fd": 1.0 + s,
             "coverage": 0.9 - 0.02 * s} for c in ("a", "b") for s in (0.0, 1.0, 10.0)]
    rows += [{"set": "real vs real", "class": c, "guidance_scale": None, "n": 20, "n_eval": 20, "fd": 0.5,
              "coverage": 0.95} for c in ("a", "b")]
    pd.DataFrame(rows).to_csv(ws.quality_csv, index=False)
    return ctx


def test_sweep_chart_has_a_panel_per_class_with_floors(results_ctx):
    ctx = results_ctx
    table = quality_panel.sweep_table(ctx)
    assert sorted(table["class"].unique()) == ["a", "b"] and table["floor_fd"].eq(0.5).all()
    fig = charts.guidance_sweep(table)
    names = {t.name for t in fig.data}
    assert {"coverage", "fd", "coverage floor (real vs real)", "fd floor (real vs real)"} <= names
    assert len([a for a in fig.layout.annotations if a.text in ("a", "b")]) == 2   # subplot titles
    # the auto-tune sweep, once written, is what the chart shows, with its picks starred
    table.assign(acceptance=0.5, chosen=table["guidance_scale"] == 1.0).to_csv(ctx.workspace.guidance_sweep_csv)
    fig = charts.guidance_sweep(quality_panel.sweep_table(ctx))
    assert any(t.name == "chosen" for t in fig.data)
    assert "no sweep yet" in charts.guidance_sweep(pd.DataFrame()).layout.annotations[0].text


def test_neighbour_side_by_side_and_copy_flags(results_ctx, tmp_path):
    ctx = results_ctx
    path = str(ctx.workspace.synthetic_dir / "a" / "a-seed0-s1.png")
    synthetic, real, text = quality_panel.neighbour(ctx, path)
    assert synthetic.getpixel((0, 0)) == (255, 0, 0) and real.getpixel((0, 0)) == (0, 0, 255)
    assert "0.00×" in text and "likely copy" in text
    # Gradio hands back a cached copy of the file: found by its (unique) name
    cached = tmp_path / "gradio-cache" / "a-seed1-s1.png"
    cached.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(cached)
    _, _, text = quality_panel.neighbour(ctx, str(cached))
    assert "1.50×" in text and "likely copy" not in text
    assert quality_panel.likely_copies(ctx) == {path}
    scores = pd.DataFrame({"image_path": [path, path.replace("seed0", "seed1")], "class": "a",
                           "confidence": [0.9, 0.8]})
    items = tab_selection.gallery_items(scores, pd.Series([True, True]), "all", tab_selection.ALL, 8,
                                        quality_panel.likely_copies(ctx))
    assert ["likely copy" in caption for _, caption in items] == [True, False]


def test_evaluate_button_runs_a_stoppable_job(results_ctx, monkeypatch):
    ctx = results_ctx
    seen = {}

    def fake_evaluate(ws, cfg, progress=None, stop=None):
        progress({"stage": "features", "step": 1, "total": 2})
        seen["stop"] = stop.wait(5)                      # the Stop button sets this event
        return {"stopped": True}
    monkeypatch.setattr("core.evaluate.quality.measure_quality", fake_evaluate)
    assert "evaluation started" in quality_panel.start_evaluate(ctx)
    assert "stop requested" in quality_panel.stop_job(ctx, (quality_panel.EVAL_JOB,))
    ctx.runner.wait(5)
    assert seen["stop"] is True and ctx.runner.status()["state"] == "stopped"
    assert "No per-class scales" in quality_panel.tuned_scales(ctx)
