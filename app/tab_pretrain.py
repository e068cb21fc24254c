"""Tab 1 — pre-training status: live curves, step and ETA, latest sample grid, start/stop/resume.

The run lives in the server-side JobRunner, so a reloaded page picks it up from `refresh`.
"""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from app import charts, widgets
from app.context import COMPUTE, AppContext, job_markdown, progress_html, stop_job
from app.widgets import bounds
from core.errors import UserError
from core.config.lab_config import PRESETS
from core.errors import ConfigError
from core.config.presets import preset
from core.config.requests import request_fields, request_text
from core.io import read_jsonl
from core.protocol.jobs import JobBusy

STAGE = "pretrain"
# UI fields of the pretrain section that a user may change before starting, by config name
EDITABLE = ("steps", "batch_size", "lr", "checkpoint_every", "sample_every")


def pretrain_config(ctx: AppContext, preset_name: str, fields: dict):
    """The workspace config with the chosen preset's pretrain section and the edited fields."""
    try:
        fields = request_fields(STAGE, fields)      # NaN, inf, huge or wrong-typed: one line, nothing started
        base = preset(request_text("preset_name", preset_name, PRESETS)).pretrain
        cfg = dataclasses.replace(ctx.config, pretrain=base)
        return AppContext(ctx.workspace, cfg, ctx.data_roots, ctx.runner).with_overrides(STAGE, fields)
    except ConfigError as e:
        raise UserError(str(e)) from e


def start_pretrain(ctx: AppContext, preset_name: str, fields: dict, fresh: bool) -> str:
    """Start (or resume from the latest checkpoint) a pre-training run in the shared slot."""
    from core.train import pretrain as pretrain_mod  # heavy (torch/diffusers): imported on first use
    cfg = pretrain_config(ctx, preset_name, fields)
    archived: list[Path | None] = []
    # archiving moves the checkpoints a running job writes: it happens only once the slot is ours
    setup = (lambda: archived.append(archive_run(ctx))) if fresh else None
    resuming = not fresh and latest_checkpoint(ctx) is not None
    try:
        ctx.runner.start(STAGE, pretrain_mod.pretrain, setup=setup, ws=ctx.workspace, cfg=cfg)
    except JobBusy as e:
        raise UserError(str(e)) from e
    if fresh:
        note = f"previous run archived to {archived[0].name}; " if archived and archived[0] else ""
    else:
        note = "resuming from the latest checkpoint; " if resuming else ""
    return f"{note}pre-training started ({cfg.pretrain.steps} steps, preset {preset_name})"


def latest_checkpoint(ctx: AppContext) -> Path | None:
    from core.train.checkpoints import latest_checkpoint as newest  # skips temp and quarantined folders
    found = newest(ctx.workspace.checkpoint_dir(STAGE))
    return found[1] if found else None


def archive_run(ctx: AppContext) -> Path | None:
    """Move the previous run's checkpoints, metrics and samples aside (never delete them)."""
    ws = ctx.workspace
    parts = [ws.checkpoint_dir(STAGE), ws.metrics_file(STAGE), ws.samples_dir / STAGE]
    if not any(p.exists() for p in parts):
        return None
    dest = ws.root / "archive" / f"{STAGE}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in parts:
        if p.exists():
            (dest / p.parent.name).mkdir(exist_ok=True)      # checkpoints/, metrics/, samples/
            p.rename(dest / p.parent.name / p.name)
    return dest


def read_metrics(ctx: AppContext) -> pd.DataFrame:
    rows = read_jsonl(ctx.workspace.metrics_file(STAGE))
    frame = pd.DataFrame(rows)
    if not frame.empty and "step" in frame:
        frame = frame.sort_values("step").drop_duplicates("step", keep="last")
    return frame


def latest_sample(ctx: AppContext) -> str | None:
    grids = sorted(ctx.workspace.grid_files(STAGE), key=_step_of)
    return str(grids[-1]) if grids else None


def step_and_eta(ctx: AppContext, metrics: pd.DataFrame, status: dict) -> str:
    """'step S / T · ETA' from the live status, else from the metrics file of a finished run."""
    running = status.get("name") == STAGE and status.get("state") == "running"
    step = int(status.get("step") or 0) if running else (int(metrics["step"].iloc[-1]) if not metrics.empty else 0)
    total = int(status.get("total") or 0) if running else 0
    if not step and metrics.empty:
        return "No pre-training run in this workspace yet: choose a preset and press **Start**."
    text = f"step **{step}**" + (f" / {total}" if total else "")
    if running and total and step:
        rate = _seconds_per_step(metrics) or (status.get("elapsed_s", 0) / max(step, 1))
        eta = max(0, total - step) * rate
        text += f" · ETA {_duration(eta)} ({rate:.2f} s/step)"
    if not metrics.empty and "loss" in metrics:
        text += f" · last loss {metrics['loss'].iloc[-1]:.4f}"
    return text


def refresh(ctx: AppContext):
    status = ctx.runner.status()
    metrics = read_metrics(ctx)
    return (job_markdown(status), progress_html(status if status.get("name") == STAGE else {}),
            step_and_eta(ctx, metrics, status), charts.training_curves(metrics), latest_sample(ctx))


def build(ctx: AppContext) -> dict:
    cfg = ctx.config.pretrain
    with gr.Row():
        preset_box = widgets.dropdown(list(PRESETS), value=ctx.config.preset, label="preset (pretrain section)")
        fields = {
            "steps": widgets.number(cfg.steps, label="steps", precision=0, **bounds(cfg, "steps")),
            "batch_size": widgets.number(cfg.batch_size, label="batch size", precision=0, **bounds(cfg, "batch_size")),
            "lr": widgets.number(cfg.lr, label="learning rate", **bounds(cfg, "lr")),
            "checkpoint_every": widgets.number(cfg.checkpoint_every, label="checkpoint every", precision=0,
                                          **bounds(cfg, "checkpoint_every")),
            "sample_every": widgets.number(cfg.sample_every, label="sample grid every", precision=0,
                                      **bounds(cfg, "sample_every")),
        }
    with gr.Row():
        start_btn = gr.Button("Start / resume", variant="primary")
        fresh_btn = gr.Button("Start fresh (archive previous run)")
        stop_btn = gr.Button("Stop", variant="stop")
    note = gr.Markdown()
    status_md = gr.Markdown(elem_id="pretrain-status")
    bar = gr.HTML()
    step_md = gr.Markdown(elem_id="pretrain-step")
    with gr.Row():
        curves = gr.Plot(label="loss / lr / images per second")
        sample = gr.Image(label="latest sample grid", type="filepath", interactive=False)
    outputs = [status_md, bar, step_md, curves, sample]
    names = list(fields)

    def on_start(fresh: bool):
        def handler(preset_name, **values):
            try:
                return start_pretrain(ctx, preset_name, values, fresh)
            except UserError as e:
                raise gr.Error(str(e)) from e
        return handler

    # inputs_kwargs hands the fields over by their config names, which are also the API's names
    start_btn.click(on_start(False), preset_box, note, inputs_kwargs=fields, concurrency_id=COMPUTE,
                    concurrency_limit=1, api_name="pretrain_start")
    fresh_btn.click(on_start(True), preset_box, note, inputs_kwargs=fields, concurrency_id=COMPUTE,
                    concurrency_limit=1, api_name="pretrain_fresh")
    stop_btn.click(lambda: stop_job(ctx, (STAGE,)), None, note, queue=False, api_name="pretrain_stop")

    def on_preset(name):
        chosen = preset(name).pretrain
        return [gr.update(value=getattr(chosen, field)) for field in names]
    preset_box.change(on_preset, preset_box, list(fields.values()), queue=False, api_visibility="private")
    timer = gr.Timer(2.0)
    timer.tick(lambda: refresh(ctx), None, outputs, show_progress="hidden", queue=False,
               api_visibility="private")
    return {"refresh": (lambda: refresh(ctx), outputs)}


def _step_of(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem.split("-")[-1])
    return int(match.group(1)) if match else -1


def _seconds_per_step(metrics: pd.DataFrame) -> float | None:
    if len(metrics) < 2 or "time" not in metrics:
        return None
    tail = metrics.tail(5)
    dsteps = tail["step"].iloc[-1] - tail["step"].iloc[0]
    dtime = tail["time"].iloc[-1] - tail["time"].iloc[0]
    return float(dtime / dsteps) if dsteps > 0 and dtime > 0 else None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
