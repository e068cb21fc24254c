"""Tab 2 — guidance-scale sampling: gallery filling as images finish, a streamed denoising preview,
a class × guidance-scale grid at one seed, parameters in every PNG, regenerate one from its seed.

Sampling runs in the shared JobRunner slot (so it never competes with a training run); the
generator handlers below only read a queue the job fills and yield Gradio updates.
"""
from __future__ import annotations

import queue
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from app import quality_panel
from app.previews import class_scale_grid, preview_image
from app.context import COMPUTE, AppContext, job_markdown, stop_job
from core.errors import UserError
from core.io import read_png_params, save_png
from core.protocol.jobs import JobBusy, JobStopped

JOB = "sampling"
# Gradio frees a cancelled or disconnected event's queue slot when it closes the handler, which
# only asks the job to stop; the next request waits this long for that step to end.
STOPPING_WAIT_S = 60.0


@dataclass(frozen=True)
class Request:
    """One sampling request; its fields are the parameters written into every PNG."""
    class_name: str
    guidance_scale: float
    steps: int
    eta: float
    seed: int
    num_images: int = 1
    batch_size: int = 1

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


def class_names(ctx: AppContext) -> list[str]:
    """Class names of the labeled set (the latent classifier was trained on them)."""
    from core.data.tables import load_splits
    try:
        return list(load_splits(ctx.workspace)[1])
    except UserError:
        return []


def missing_models(ctx: AppContext) -> list[str]:
    from core.models import missing_models
    # pre-training saves the scheduler with the UNet: the tab names both "unet"
    names = {"vae": "autoencoder", "unet": "unet", "scheduler": "unet", "latent_classifier": "latent classifier"}
    return list(dict.fromkeys(names[part] for part in missing_models(ctx.workspace, ctx.config)))


def hint(ctx: AppContext) -> str:
    missing = missing_models(ctx)
    if missing:
        return (f"No {', '.join(missing)} in {ctx.workspace.root}. Run `python -m core run "
                f"--workspace {ctx.workspace.root}` (or pre-train in tab 1) before sampling.")
    return "Models found. Pick a class and press **Generate**."


def output_path(ctx: AppContext, req: Request, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in req.class_name)
    return (ctx.workspace.samples_dir / "lab" / safe /
            f"{safe}_seed{seed}_g{req.guidance_scale:g}_n{req.steps}_eta{req.eta:g}.png")


def image_params(ctx: AppContext, req: Request, seed: int, batch: list[int] | None = None) -> dict[str, Any]:
    """What made the image: request, scheduler, the hashes of the models (cached pipeline) and
    the seeds sampled in the same batch (batched kernels round differently: a seed alone can
    differ from the same seed in a batch by a few 1/255, so regenerating re-runs the batch)."""
    from core.generate.pipeline import load_pipeline
    hashes = getattr(load_pipeline(ctx.workspace, ctx.config), "model_hashes", {})
    return {"class": req.class_name, "seed": seed, "guidance_scale": req.guidance_scale,
            "steps": req.steps, "eta": req.eta, "scheduler": ctx.config.sampling.sampler,
            "preset": ctx.config.preset, "batch_seeds": list(batch or [seed]), **hashes}


def preview_every(steps: int) -> int:
    """Decode the x0 prediction about five times per run: often enough to watch it form, rare
    enough that the VAE decode stays a small share of the sampling time."""
    return max(1, int(steps) // 5)


def sampling_job(ctx: AppContext, req: Request, events: "queue.Queue", progress=None, stop=None) -> dict:
    """Sample `req` in batches, save each PNG with its parameters, push events to the UI queue."""
    from app.sampler import sample_images
    seeds = req.seeds()
    done: list[str] = []
    total_steps = req.steps * len(seeds)

    size = max(1, req.batch_size)
    for start in range(0, len(seeds), size):
        batch = seeds[start:start + size]

        def callback(step: int, total: int, preview: Any = None, _offset=start, _n=len(batch)) -> None:
            images_done = _offset + _n * step / max(total, 1)          # fractional images so far
            progress({"stage": JOB, "step": round(images_done * req.steps), "total": total_steps,
                      "message": f"images {_offset + 1}-{_offset + _n} of {len(seeds)}: step "
                                 f"{step}/{total}"})
            if preview is not None:
                events.put(("preview", preview))

        images = sample_images(ctx.workspace, ctx.config, class_name=req.class_name, seeds=batch,
                               guidance_scale=req.guidance_scale, steps=req.steps, eta=req.eta,
                               callback=callback, preview_every=preview_every(req.steps), stop=stop)
        # an interrupted call returns only whole finished images: those are kept and shown
        for seed, image in zip(batch, images):
            path = save_png(image, output_path(ctx, req, seed), image_params(ctx, req, seed, batch))
            done.append(str(path))
            events.put(("image", str(path)))
        if stop is not None and stop.is_set():
            raise JobStopped()
    return {"paths": done}


def stream(ctx: AppContext, name: str, job_fn, **kwargs) -> Iterator[tuple[str, Any]]:
    """Start `job_fn` in the shared slot and yield its events until it ends.

    If the consumer goes away (browser closed, client cancelled) the generator is closed and
    the job is asked to stop, so an abandoned request never keeps the slot busy.
    """
    events: queue.Queue = queue.Queue()
    try:
        job_id = ctx.runner.start(name, job_fn, wait_if_stopping=STOPPING_WAIT_S, ctx=ctx, events=events,
                                  **kwargs)
    except JobBusy as e:
        raise UserError(str(e)) from e
    finished = False
    try:
        while True:
            try:
                yield events.get(timeout=0.1)
                continue
            except queue.Empty:
                pass
            status = ctx.runner.status()
            if status["job_id"] != job_id or status["state"] != "running":
                while not events.empty():
                    yield events.get_nowait()
                finished = True
                yield ("end", status)
                return
    finally:
        if not finished and ctx.runner.status().get("job_id") == job_id:
            ctx.runner.stop()


def generate(ctx: AppContext, req: Request) -> Iterator[tuple[list[str], Image.Image | None, str]]:
    """Handler core: yields (gallery paths, preview, status) as the job advances."""
    if missing_models(ctx):
        raise UserError(hint(ctx))
    if req.class_name not in class_names(ctx):
        raise UserError(f"class {req.class_name!r} is not one of the data set's classes")
    gallery: list[str] = []
    preview = None
    for kind, payload in stream(ctx, JOB, sampling_job, req=req):
        if kind == "preview":
            preview = preview_image(payload) or preview
            yield gallery, preview, job_markdown(ctx.runner.status())
        elif kind == "image":
            gallery = [*gallery, payload]
            yield gallery, preview, job_markdown(ctx.runner.status())
        elif kind == "end":
            if payload["state"] == "failed":
                raise UserError(f"sampling failed: {payload['error']}")
            yield gallery, preview, job_markdown(payload)


def grid_job(ctx: AppContext, classes: list[str], scales: list[float], seed: int, steps: int,
             eta: float, events: "queue.Queue", progress=None, stop=None) -> dict:
    """One image per (class, scale) cell at the same seed; cells stream to the UI as they finish."""
    from app.sampler import sample_images
    total = len(classes) * len(scales)
    for i, name in enumerate(classes):
        for j, scale in enumerate(scales):
            if stop is not None and stop.is_set():
                raise JobStopped()
            req = Request(name, scale, steps, eta, seed)

            images = sample_images(ctx.workspace, ctx.config, class_name=name, seeds=[seed],
                                   guidance_scale=scale, steps=steps, eta=eta, stop=stop)
            if not images:                    # interrupted before the cell finished
                raise JobStopped()
            image = images[0]
            save_png(image, output_path(ctx, req, seed), image_params(ctx, req, seed))
            done = i * len(scales) + j + 1
            progress({"stage": "grid", "step": done, "total": total,
                      "message": f"cell {done}/{total}: {name} @ {scale:g}"})
            events.put(("cell", (i, j, image)))
    return {"cells": total}


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError as e:
        raise UserError(f"guidance scales must be numbers separated by commas, got {text!r}") from e
    if not scales or any(s < 0 for s in scales):
        raise UserError(f"guidance scales must be one or more numbers >= 0, got {text!r}")
    return scales


def grid(ctx: AppContext, classes: list[str], scales_text: str, seed: int, steps: int,
         eta: float) -> Iterator[tuple[Image.Image | None, str]]:
    """Handler core: yields the growing class × guidance-scale grid and the status."""
    scales = parse_scales(scales_text)
    classes = classes or class_names(ctx)
    if missing_models(ctx) or not classes:
        raise UserError(hint(ctx))
    canvas, cells = None, {}
    for kind, payload in stream(ctx, "grid", grid_job, classes=classes, scales=scales, seed=int(seed),
                                steps=int(steps), eta=float(eta)):
        if kind == "cell":
            i, j, image = payload
            cells[i, j] = image
            canvas = class_scale_grid(classes, scales, cells)
            yield canvas, job_markdown(ctx.runner.status())
        elif kind == "end":
            if payload["state"] == "failed":
                raise UserError(f"grid failed: {payload['error']}")
            if canvas is not None and payload["state"] == "done":
                params = {"grid": {"classes": classes, "guidance_scales": scales}, "seed": int(seed),
                          "steps": int(steps), "eta": float(eta), "scheduler": ctx.config.sampling.sampler}
                save_png(canvas, ctx.workspace.samples_dir / "lab" / f"grid_seed{int(seed)}.png", params)
            yield canvas, job_markdown(payload)


def params_of(ctx: AppContext, path_text: str) -> dict:
    """Parameters stored in a PNG inside the workspace or a data root."""
    path = ctx.resolve_path(path_text, field_name="PNG path")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a PNG file")
    try:
        with open(path, "rb") as f:
            is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
        params = read_png_params(path) if is_png else None
    except OSError as e:                 # unreadable, or a PNG signature on a broken file
        raise UserError(f"{path} cannot be read as a PNG: {e}") from e
    except ValueError as e:              # the parameters chunk is not JSON
        raise UserError(f"{path} has a parameters text chunk that is not JSON: {e}") from e
    if params is None:
        raise UserError(f"{path} is not a PNG file")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{path} carries no parameters text chunk")
    return params


def request_from_params(params: dict) -> Request:
    """The request that remakes the image exactly: its whole batch when it was sampled in one
    (consecutive seeds, as sampling_job makes them), else the seed alone."""
    try:
        seed = int(params["seed"])
        batch = [int(b) for b in params.get("batch_seeds") or [seed]]
        if seed not in batch or batch != list(range(batch[0], batch[0] + len(batch))):
            batch = [seed]
        return Request(class_name=str(params["class"]), guidance_scale=float(params["guidance_scale"]),
                       steps=int(params["steps"]), eta=float(params["eta"]), seed=batch[0],
                       num_images=len(batch), batch_size=len(batch))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the PNG parameters lack a usable field: {e}") from e


def pick_seed(seed: float | int | None) -> int:
    """-1 (or empty) means a fresh random seed, as in A1111; the seed used is shown and saved."""
    if seed is None or int(seed) < 0:
        return random.randrange(0, 2**31 - 1)
    return int(seed)


def build(ctx: AppContext) -> dict:
    cfg = ctx.config.sampling
    classes = class_names(ctx)
    hint_md = gr.Markdown(hint(ctx), elem_id="sampling-hint")
    with gr.Row():
        fields = {
            "class_name": gr.Dropdown(classes, value=classes[0] if classes else None, label="class",
                                      allow_custom_value=False),
            "guidance_scale": gr.Slider(0, 30, value=cfg.guidance_scale, step=0.5, label="guidance scale",
                                        elem_id="guidance-slider"),
            "steps": gr.Slider(1, 200, value=cfg.steps, step=1, label="steps", elem_id="steps-slider"),
            "eta": gr.Slider(0, 1, value=cfg.eta, step=0.05, label="eta (DDIM)"),
        }
    with gr.Row():
        fields["seed"] = gr.Number(-1, label="seed (-1 = random)", precision=0)
        fields["num_images"] = gr.Slider(1, 64, value=4, step=1, label="number of images",
                                         elem_id="num-images-slider")
        fields["batch_size"] = gr.Slider(1, 32, value=min(4, cfg.batch_size), step=1, label="batch size")
        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        stop_btn = gr.Button("Stop", variant="stop")
    status_md = gr.Markdown(elem_id="sampling-status")
    with gr.Row():
        preview = gr.Image(label="denoising preview", type="pil", interactive=False, height=200)
        gallery = gr.Gallery(label="generated (PNG keeps its parameters)", columns=4, height=360,
                             fit_columns=False, elem_id="sampling-gallery", type="filepath",
                             interactive=False)             # read by .select, never uploaded to
    with gr.Row():
        params_json = gr.JSON(label="parameters of the selected image")
        with gr.Column():
            png_path = gr.Textbox(label="or read parameters from a PNG (path in the workspace)")
            load_btn = gr.Button("Load parameters")
            regen_btn = gr.Button("Regenerate selected from its seed")
    with gr.Accordion("class × guidance-scale grid at one seed", open=False):
        with gr.Row():
            grid_classes = gr.Dropdown(classes, value=classes, multiselect=True, label="classes")
            grid_scales = gr.Textbox("0, 2.5, 5, 10", label="guidance scales")
            grid_seed = gr.Number(0, label="seed", precision=0)
            grid_btn = gr.Button("Make grid")
        grid_image = gr.Image(label="grid", type="pil", interactive=False)
    sweep = quality_panel.build_sweep(ctx)

    # Gradio names an endpoint's API parameters after the handler's own parameters
    def on_generate(class_name, guidance_scale, steps, eta, seed, num_images, batch_size):
        """Sample images of one class with classifier guidance; streams (gallery, preview, status).

        Args:
            class_name: a class of the labeled set
            guidance_scale: classifier-guidance scale (0 = unguided)
            steps: DDIM steps
            eta: DDIM eta (0 = deterministic, 1 = DDPM-like)
            seed: seed of the first image (image k uses seed + k); -1 draws a random one
            num_images: how many images
            batch_size: images sampled together (a seed's pixels depend slightly on its batch)
        """
        try:
            req = Request(class_name=class_name or "", guidance_scale=float(guidance_scale), steps=int(steps),
                          eta=float(eta), seed=pick_seed(seed), num_images=int(num_images),
                          batch_size=int(batch_size))
            yield from generate(ctx, req)
        except UserError as e:
            raise gr.Error(str(e)) from e

    def on_select(evt: gr.SelectData, images):
        try:                                    # a filepath gallery's value: [(path, caption), ...]
            return read_png_params(images[evt.index][0])
        except (IndexError, TypeError, OSError):
            return {}

    def on_load(path):
        try:
            return params_of(ctx, path)
        except UserError as e:
            raise gr.Error(str(e)) from e

    def on_regenerate(params):
        try:
            req = request_from_params(params or {})
        except UserError as e:
            raise gr.Error("select an image or load a PNG's parameters first") from e
        try:
            yield from generate(ctx, req)
        except UserError as e:
            raise gr.Error(str(e)) from e

    def on_grid(classes, guidance_scales, seed, steps, eta):
        try:
            yield from grid(ctx, list(classes or []), guidance_scales, pick_seed(seed), steps, eta)
        except UserError as e:
            raise gr.Error(str(e)) from e

    outputs = [gallery, preview, status_md]
    gen = gen_btn.click(on_generate, list(fields.values()), outputs, concurrency_id=COMPUTE,
                        concurrency_limit=1, api_name="sample", show_progress="minimal")
    gallery.select(on_select, gallery, params_json, queue=False, api_visibility="private")
    load_btn.click(on_load, png_path, params_json, queue=False, api_name="read_params")
    regen = regen_btn.click(on_regenerate, params_json, outputs, concurrency_id=COMPUTE, concurrency_limit=1,
                            api_name="regenerate")
    grid_ev = grid_btn.click(on_grid, [grid_classes, grid_scales, grid_seed, fields["steps"], fields["eta"]],
                             [grid_image, status_md], concurrency_id=COMPUTE, concurrency_limit=1,
                             api_name="grid")
    # Stop sets the runner's event (the core loop ends within a step) AND cancels the streaming
    # events, whose closed generators would otherwise keep their queue slot until the job ends.
    stop_btn.click(lambda: stop_job(ctx, (JOB, "grid")), None, status_md, queue=False,
                   api_name="sample_stop", cancels=[gen, regen, grid_ev])

    refresh_sweep, sweep_outputs = sweep["refresh"]

    def refresh():
        names_now = class_names(ctx)
        value = names_now[0] if names_now else None
        return (hint(ctx), gr.update(choices=names_now, value=value),
                gr.update(choices=names_now, value=names_now), *refresh_sweep())

    return {"refresh": (refresh, [hint_md, fields["class_name"], grid_classes, *sweep_outputs])}
