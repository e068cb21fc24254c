"""Handler-level tests of the four tabs and the path sandbox, on a tiny real workspace."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app import sampling_jobs, tab_results, tab_selection
from app.previews import LABEL_H, LABEL_W
from core.generate.requests import SamplingRequest as Request, request_from_params
from core.errors import UserError
from core.io import read_png_params


def test_paths_resolve_only_inside_workspace_and_data_roots(lab_ctx, tmp_path):
    ws = lab_ctx.workspace.root
    assert lab_ctx.resolve_path("data/splits.csv") == ws / "data" / "splits.csv"
    inside_root = lab_ctx.data_roots[0] / "x.png"
    inside_root.write_bytes(b"x")
    assert lab_ctx.resolve_path(str(inside_root)) == inside_root
    for bad in ("/etc/passwd", "../../etc/passwd", str(tmp_path / "elsewhere.png"), "data/../../x"):
        with pytest.raises(UserError, match="outside the workspace"):
            lab_ctx.resolve_path(bad, must_exist=False)
    link = ws / "escape-link"
    if not link.exists():
        os.symlink("/etc", link)
    with pytest.raises(UserError, match="outside the workspace"):
        lab_ctx.resolve_path("escape-link/passwd")
    with pytest.raises(UserError, match="does not exist"):
        lab_ctx.resolve_path("nope.png")
    with pytest.raises(UserError, match="PNG path is empty"):
        sampling_jobs.params_of(lab_ctx, "  ")


def test_generate_streams_gallery_and_keeps_params(lab_ctx):
    classes = sampling_jobs.class_names(lab_ctx)
    req = Request(classes[1], guidance_scale=2.5, steps=3, eta=0.5, seed=7, num_images=3, batch_size=1)
    updates = list(sampling_jobs.sample_into_gallery(lab_ctx, req))
    sizes = [len(g) for g, _, _ in updates]
    assert sizes[-1] == 3 and sorted(sizes) == sizes and {1, 2, 3} <= set(sizes)   # fills one by one
    assert any(p is not None for _, p, _ in updates)                                # preview streamed
    assert "done" in updates[-1][2]
    params = read_png_params(updates[-1][0][0])
    assert params["class"] == classes[1] and params["seed"] == 7 and params["guidance_scale"] == 2.5
    assert params["steps"] == 3 and params["eta"] == 0.5 and params["unet_hash"]
    # regenerate from the stored parameters (read back through the sandbox): same pixels
    rel = os.path.relpath(updates[-1][0][0], lab_ctx.workspace.root)
    first = np.asarray(Image.open(updates[-1][0][0]))
    again = list(sampling_jobs.sample_into_gallery(lab_ctx, request_from_params(
        sampling_jobs.params_of(lab_ctx, rel))))
    assert np.array_equal(np.asarray(Image.open(again[-1][0][0])), first)


def test_generate_rejects_unknown_class_and_busy_slot(lab_ctx):
    with pytest.raises(UserError, match="not one of"):
        list(sampling_jobs.sample_into_gallery(lab_ctx, Request("no-such-class", 1.0, 2, 1.0, 0)))
    import threading
    gate = threading.Event()
    lab_ctx.runner.start("blocker", lambda progress=None, stop=None: gate.wait(10))
    try:
        with pytest.raises(UserError, match="'blocker' is running"):
            list(sampling_jobs.sample_into_gallery(lab_ctx, Request(sampling_jobs.class_names(lab_ctx)[0], 1.0, 2, 1.0, 0)))
    finally:
        gate.set()
        lab_ctx.runner.wait(5)


def test_stop_ends_sampling_within_a_step(lab_ctx):
    name = sampling_jobs.class_names(lab_ctx)[0]
    req = Request(name, guidance_scale=1.0, steps=400, eta=1.0, seed=0, num_images=2, batch_size=2)
    gen = sampling_jobs.sample_into_gallery(lab_ctx, req)
    next(gen)                                   # first preview: the loop is running
    lab_ctx.runner.stop()
    rest = list(gen)
    status = lab_ctx.runner.status()
    assert status["state"] == "stopped"
    assert status["step"] < 400 * 2 * 0.5
    assert rest == [] or rest[-1][0] == []      # no half-made image reaches the gallery


def test_closing_the_stream_stops_the_job(lab_ctx):
    name = sampling_jobs.class_names(lab_ctx)[0]
    gen = sampling_jobs.sample_into_gallery(lab_ctx, Request(name, 1.0, 400, 1.0, 0, 2, 2))
    next(gen)
    gen.close()                                 # what Gradio does when the client goes away
    assert lab_ctx.runner.wait(10)["state"] == "stopped"


def test_grid_fills_cells_and_is_saved(lab_ctx):
    classes = sampling_jobs.class_names(lab_ctx)[:2]
    frames = list(sampling_jobs.sample_scale_grid(lab_ctx, classes, "0, 4", seed=3, steps=2, eta=1.0))
    assert len(frames) == 5                     # four cells, then the final state
    canvas = frames[-1][0]
    cell = 32
    assert canvas.size == (LABEL_W + 2 * cell, LABEL_H + 2 * cell)
    saved = lab_ctx.workspace.samples_dir / "lab" / "grid_seed3.png"
    assert read_png_params(saved)["grid"]["guidance_scales"] == [0.0, 4.0]
    with pytest.raises(UserError, match="guidance scales"):
        list(sampling_jobs.sample_scale_grid(lab_ctx, classes, "a, b", 0, 2, 1.0))


def test_threshold_refilters_from_stored_scores(lab_ctx):
    low = tab_selection.refilter(lab_ctx, 0.2, "threshold", 0, "accepted", tab_selection.ALL, 64)
    high = tab_selection.refilter(lab_ctx, 0.8, "threshold", 0, "accepted", tab_selection.ALL, 64)
    scores = pd.read_csv(lab_ctx.workspace.synthetic_dir / "scores.csv")
    for result, t in ((low, 0.2), (high, 0.8)):
        table = result[1].set_index("class")
        assert table.loc["all", "accepted"] == int((scores["confidence"] >= t).sum())
        assert table.loc["all", "total"] == len(scores)
        assert len(result[2]) == table.loc["all", "accepted"]
    # the gallery is sorted by confidence within each class
    caps = [c for _, c in low[2]]
    by_class: dict[str, list[float]] = {}
    for cap in caps:
        cls, conf = cap.split(" · ")
        by_class.setdefault(cls, []).append(float(conf))
    assert all(v == sorted(v, reverse=True) for v in by_class.values())
    assert '"x0":0.8' in high[3].plot.replace(" ", "")          # the histogram's threshold line moved


def test_export_writes_accepted_set(lab_ctx):
    msg = tab_selection.export(lab_ctx, 0.5, "threshold", 0)
    scores = pd.read_csv(lab_ctx.workspace.synthetic_dir / "scores.csv")
    n = int((scores["confidence"] >= 0.5).sum())
    assert f"exported {n}" in msg
    manifest = pd.read_csv(lab_ctx.workspace.accepted_dir / "manifest.csv")
    assert len(manifest) == n


def test_empty_workspace_shows_hints(tmp_path):
    from app import tab_pretrain
    from app.context import AppContext
    ctx = AppContext.create(tmp_path / "empty", preset_name="tiny")
    summary, table, gallery, *_ = tab_selection.refilter(ctx, 0.5, "threshold", 0)
    assert "No stored scores" in summary and gallery == [] and table.empty
    assert "No results" in tab_results.refresh(ctx)[2]
    assert "No autoencoder, unet, latent classifier" in sampling_jobs.hint(ctx)
    assert "No pre-training run" in tab_pretrain.refresh(ctx)[2]


def test_results_summary_recall_and_confusion(lab_ctx):
    runs, written = tab_results.load_runs(lab_ctx), tab_results.load_summary(lab_ctx)
    summary = tab_results.accuracy_table(written).set_index("arm")
    assert summary.loc["baseline", "mean"] == pytest.approx(0.61)
    assert summary.loc["selected", "mean ± std"] == "0.710 ± 0.014"
    recall = tab_results.recall_table(written)
    assert set(recall["arm"]) == {"baseline", "selected"} and len(recall) == 2 * runs.filter(like="recall_").shape[1]
    mats = tab_results.confusion_by_arm(runs, written)
    n = len(mats["baseline"][1])
    assert mats["baseline"][0].shape == (n, n)
    assert mats["baseline"][0].sum() == 2 * (5 * n + n * n)       # summed over the two seeds
    out = tab_results.refresh(lab_ctx)
    table = out[4].set_index("arm")
    assert out[-1].endswith("runs.csv") and table.loc["selected", "accuracy"] == "0.710 ± 0.014"
    assert table.loc["selected", "Δ accuracy (points)"] == "+10.0" and table.loc["selected", "seeds"] == 2


def test_results_tab_shows_the_summary_core_wrote(lab_ctx, tmp_path):
    """summary.json is the contract: the tab shows it as written (the tables summary.md holds),
    even beside a runs.csv that says otherwise, and re-derives nothing from it."""
    from core.evaluate.summary_tables import results_frame
    import shutil

    from app.context import AppContext
    ctx = AppContext.create(tmp_path / "ws", preset_name="tiny")
    shutil.copytree(lab_ctx.workspace.results_dir, ctx.workspace.results_dir)
    runs = pd.read_csv(ctx.workspace.runs_csv)
    runs.assign(accuracy=0.1, **{c: 0.1 for c in runs.filter(like="recall_")}).to_csv(ctx.workspace.runs_csv, index=False)
    out = tab_results.refresh(ctx)
    assert out[4].equals(results_frame(tab_results.load_summary(ctx)))
    assert out[4].set_index("arm").loc["selected", "accuracy"] == "0.710 ± 0.014"
    assert out[4].to_csv() in "".join(ctx.workspace.summary_md.read_text(encoding="utf-8")) or \
        "| selected | 2 | 0.710 ± 0.014 |" in ctx.workspace.summary_md.read_text(encoding="utf-8")
    recall = tab_results.recall_table(tab_results.load_summary(ctx)).groupby("arm")["recall"].mean()
    assert recall.to_dict() == pytest.approx({"baseline": 0.6, "selected": 0.7})


def test_one_click_experiment_starts_and_stops(tmp_path):
    """The results tab's button runs core.protocol.experiment.run_all in the shared slot; Stop ends it."""
    import time

    from app.context import AppContext, stop_job
    from core.config.store import save_config
    from core.data.demo import build_demo
    ctx = AppContext.create(tmp_path / "ws", preset_name="tiny")
    build_demo(ctx.workspace, ctx.config)
    save_config(ctx.config, ctx.workspace.root)
    assert "experiment started" in tab_results.start_experiment(ctx, seeds=1)
    with pytest.raises(UserError, match="'experiment' is running"):
        tab_results.start_experiment(ctx)
    end = time.time() + 60
    while time.time() < end and not ctx.runner.status()["step"]:
        time.sleep(0.05)
    assert "another tab" in stop_job(ctx, ("sampling",))        # another tab's Stop leaves it alone
    assert "stop requested" in stop_job(ctx, ("experiment",))
    status = ctx.runner.wait(60)
    assert status["state"] == "stopped", status
    assert "experiment" in tab_results.refresh(ctx)[0]


def test_app_flags_and_empty_workspace_setup(tmp_path):
    import importlib.util

    from app.context import AppContext
    spec = importlib.util.spec_from_file_location("lab_main", Path(__file__).resolve().parents[2] / "app.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    args = main.parse_args(["--workspace", str(tmp_path / "w"), "--data-root", str(tmp_path),
                            "--data-root", "/data", "--auth", "ann:secret", "--share"])
    assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 7860, True, "ann:secret")
    assert args.data_roots == [tmp_path, Path("/data")]
    with pytest.raises(SystemExit):
        main.parse_args(["--auth", "no-colon"])
    with pytest.raises(UserError, match="--data-root .* is not a folder"):
        AppContext.create(tmp_path / "w", [tmp_path / "missing"])
    ctx = AppContext.create(tmp_path / "w", preset_name="tiny")
    done = main.prepare_workspace(ctx, bundle=tmp_path / "no-bundle", preset_name="tiny")
    assert done and done[0].startswith("built demo data")
    assert ctx.workspace.split_manifest.exists() and sampling_jobs.class_names(ctx)
    assert main.prepare_workspace(ctx, bundle=tmp_path / "no-bundle", preset_name="tiny") == []


def test_regenerate_remakes_an_image_sampled_in_a_batch_exactly(lab_ctx):
    """Batched kernels round differently from batch 1, so a seed's pixels depend on its batch;
    the PNG records the batch and regenerating re-runs it (same pixels, every image)."""
    classes = sampling_jobs.class_names(lab_ctx)
    req = Request(classes[0], guidance_scale=2.0, steps=2, eta=1.0, seed=40, num_images=3, batch_size=3)
    paths = list(sampling_jobs.sample_into_gallery(lab_ctx, req))[-1][0]
    made = {p: np.asarray(Image.open(p)) for p in paths}
    params = read_png_params(paths[1])
    assert params["seed"] == 41 and params["batch_seeds"] == [40, 41, 42]
    again = request_from_params(params)
    assert (again.seed, again.num_images, again.batch_size) == (40, 3, 3)
    for p in list(sampling_jobs.sample_into_gallery(lab_ctx, again))[-1][0]:
        assert np.array_equal(np.asarray(Image.open(p)), made[p])


def test_guidance_interval_is_saved_in_the_png_and_regenerated(lab_ctx):
    from core.generate.requests import parse_interval
    assert parse_interval("") is None and parse_interval(" 200, 700 ") == (200, 700)
    for bad in ("700, 200", "1", "a, b"):
        with pytest.raises(UserError, match="guidance.interval"):
            parse_interval(bad)
    name = sampling_jobs.class_names(lab_ctx)[0]
    req = Request(name, guidance_scale=3.0, steps=3, eta=1.0, seed=21, guidance_interval=(0, 400))
    path = list(sampling_jobs.sample_into_gallery(lab_ctx, req))[-1][0][0]
    made, params = np.asarray(Image.open(path)), read_png_params(path)
    assert params["guidance_interval"] == [0, 400] and "_g3_i0-400_" in Path(path).name
    again = request_from_params(params)
    assert again.guidance_interval == (0, 400)
    os.remove(path)
    remade = list(sampling_jobs.sample_into_gallery(lab_ctx, again))[-1][0][0]
    assert remade == path and np.array_equal(np.asarray(Image.open(remade)), made)
    plain = list(sampling_jobs.sample_into_gallery(lab_ctx, Request(name, 3.0, 3, 1.0, 21)))[-1][0][0]
    assert plain != path and "guidance_interval" not in read_png_params(plain)
    assert not np.array_equal(np.asarray(Image.open(plain)), made)       # the interval changed the image
