"""Quality panels: tab 2's quality-vs-guidance chart with its Evaluate / Auto-tune jobs, and tab 3's
nearest real neighbour of a selected synthetic image plus the likely-copy flags in its gallery.

The numbers come from core.evaluate.quality (results/quality.csv, results/quality_images.csv) and core.protocol.tune
(results/guidance_sweep.csv); both run as jobs in the shared slot, with progress and stop.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from app import charts
from app.context import COMPUTE, AppContext, FileCache, job_markdown, stop_job
from core.config.presets import config_for
from core.errors import UserError
from core.protocol.jobs import JobBusy

EVAL_JOB, TUNE_JOB = "quality", "tune-guidance"
_tables = FileCache()


def _read(path: Path) -> pd.DataFrame:
    """A results table, cached until the file changes (the gallery asks on every slider move)."""
    if not path.exists():
        return pd.DataFrame()
    return _tables.get(path, pd.read_csv)


def sweep_table(ctx: AppContext) -> pd.DataFrame:
    """The auto-tune sweep when there is one, else the last evaluation's per-scale rows with the
    acceptance under the config's selection rule, floors joined by (class, n_eval)."""
    ws = ctx.workspace
    sweep = _read(ws.guidance_sweep_csv)
    if not sweep.empty:
        return sweep
    quality = _read(ws.quality_csv)
    if quality.empty:
        return pd.DataFrame()
    rows = quality[quality["set"] == "all"].copy()
    floors = quality[quality["set"] == "real vs real"][["class", "n_eval", "fd", "coverage"]]
    rows = rows.merge(floors.rename(columns={"fd": "floor_fd", "coverage": "floor_coverage"}),
                      on=["class", "n_eval"], how="left")
    if ws.synthetic_scores.exists():
        from core.evaluate.selection import select
        kept = select(ws, ctx.config)
        rate = kept.groupby([kept["class"].astype(str), pd.to_numeric(kept["guidance_scale"])])["kept"].mean()
        rows["acceptance"] = [rate.get((str(c), float(s))) for c, s in zip(rows["class"], rows["guidance_scale"])]
    return rows


def start_evaluate(ctx: AppContext) -> str:
    from core.evaluate.quality import measure_quality
    try:
        ctx.runner.start(EVAL_JOB, measure_quality, ws=ctx.workspace, cfg=ctx.config)
    except JobBusy as e:
        raise UserError(str(e)) from e
    return "evaluation started: features of new images are embedded, then every class x scale is measured"


def tune_job(ctx: AppContext, progress=None, stop=None) -> dict:
    from core.protocol.tune import tune_guidance
    out = tune_guidance(ctx.workspace, ctx.config, progress=progress, stop=stop)
    if not out.get("stopped"):
        ctx.config = config_for(ctx.workspace)   # the per-class scales it wrote
    return out


def start_tune(ctx: AppContext) -> str:
    from core.protocol.tune import GRID, NUM
    try:
        ctx.runner.start(TUNE_JOB, tune_job, ctx=ctx)
    except JobBusy as e:
        raise UserError(str(e)) from e
    return (f"auto-tune started: {NUM} images per class at scales {', '.join(f'{s:g}' for s in GRID)}, "
            "then per class the scale with the best acceptance x coverage among those that copy no more "
            "than 5% (or than real images do)")


def tuned_scales(ctx: AppContext) -> str:
    picks = ctx.config.sampling.class_scales()
    if not picks:
        return f"No per-class scales set: every class samples at {ctx.config.sampling.guidance_scale:g}."
    return "Per-class guidance scales in the config: " + ", ".join(f"{c} = {s:g}" for c, s in picks.items())


def images_table(ctx: AppContext) -> pd.DataFrame:
    """results/quality_images.csv with absolute image paths (one row per synthetic image)."""
    from core.evaluate.selection import synthetic_path
    frame = _read(ctx.workspace.quality_images_csv)
    if frame.empty or "image_path" in frame:
        return frame
    frame["image_path"] = [str(synthetic_path(ctx.workspace, f)) for f in frame["file"].astype(str)]
    return frame


def likely_copies(ctx: AppContext) -> set[str]:
    frame = images_table(ctx)
    if frame.empty:
        return set()
    return set(frame.loc[frame["likely_copy"].astype(bool), "image_path"])


def neighbour(ctx: AppContext, image_path: str) -> tuple[Image.Image | None, Image.Image | None, str]:
    """(synthetic image, its nearest real image, markdown with the distance ratio)."""
    frame = images_table(ctx)
    if frame.empty:
        return None, None, "No nearest-neighbour table yet: press **Evaluate quality** in tab 2."
    hit = frame[frame["image_path"] == str(image_path)]
    if hit.empty:   # Gradio may hand back its cached copy: synthetic file names are unique (class, seed, scale)
        hit = frame[frame["image_path"].map(lambda p: Path(p).name) == Path(str(image_path)).name]
    if hit.empty:
        return None, None, "This image was not in the last evaluation: run **Evaluate quality** again."
    row = hit.iloc[-1]
    try:
        near = Image.open(row["nn_path"]).convert("RGB")
    except OSError as e:
        near = None
        missing = f" (cannot open {row['nn_path']}: {e})"
    else:
        missing = ""
    flag = " — **likely copy**" if bool(row["likely_copy"]) else ""
    text = (f"Nearest real image: `{Path(row['nn_path']).name}`{missing}; distance {row['nn_distance']:.3g}, "
            f"**{row['ratio']:.2f}×** the real set's median nearest-neighbour distance{flag}.")
    return Image.open(image_path).convert("RGB"), near, text


def build_sweep(ctx: AppContext) -> dict:
    """Tab 2's panel: chart, Evaluate / Auto-tune / Stop, the per-class scales in the config."""
    with gr.Accordion("quality vs guidance scale (fidelity, coverage, acceptance)", open=False):
        plot = gr.Plot(label="quality vs guidance scale")
        with gr.Row():
            eval_btn = gr.Button("Evaluate quality")
            tune_btn = gr.Button("Auto-tune guidance", variant="primary")
            refresh_btn = gr.Button("Refresh")
            stop_btn = gr.Button("Stop", variant="stop")
        note = gr.Markdown(tuned_scales(ctx))

    def wrap(fn):
        def handler():
            try:
                return fn(ctx)
            except UserError as e:
                raise gr.Error(str(e)) from e
        return handler

    def refresh():
        status = ctx.runner.status()
        running = job_markdown(status) if status.get("name") in (EVAL_JOB, TUNE_JOB) else ""
        return charts.guidance_sweep(sweep_table(ctx)), "\n\n".join(filter(None, [running, tuned_scales(ctx)]))

    eval_btn.click(wrap(start_evaluate), None, note, concurrency_id=COMPUTE, concurrency_limit=1,
                   api_name="evaluate_quality")
    tune_btn.click(wrap(start_tune), None, note, concurrency_id=COMPUTE, concurrency_limit=1,
                   api_name="tune_guidance")
    refresh_btn.click(refresh, None, [plot, note], queue=False, api_visibility="private")
    stop_btn.click(lambda: stop_job(ctx, (EVAL_JOB, TUNE_JOB)), None, note, queue=False, api_name="quality_stop")
    return {"refresh": (refresh, [plot, note])}


def build_neighbour(ctx: AppContext, gallery: gr.Gallery) -> None:
    """Tab 3's panel: selecting a gallery image shows it beside its nearest real image."""
    with gr.Row():
        synthetic = gr.Image(label="selected synthetic image", type="pil", interactive=False, height=200)
        real = gr.Image(label="nearest real image (pools + labeled train)", type="pil", interactive=False,
                        height=200)
    text = gr.Markdown("Select an image in the gallery to see its nearest real image.")

    def on_select(evt: gr.SelectData, items):
        try:                                    # a gallery's value: [(path, caption), ...]
            path = items[evt.index][0]
        except (IndexError, TypeError):
            return None, None, ""
        return neighbour(ctx, path)

    gallery.select(on_select, gallery, [synthetic, real, text], queue=False, api_visibility="private")
