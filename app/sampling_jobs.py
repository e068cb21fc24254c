"""The sampling tab's work: sampling jobs in the shared compute slot (through core's
`sample_seeds`), their PNGs with the parameters that remake them, and the handler cores that
stream gallery, preview and grid updates (`sample_into_gallery`, `sample_scale_grid`)."""
from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from app.context import AppContext, job_markdown
from app.previews import class_scale_grid, preview_image
from app.streaming import stream
from core.config.requests import request_text
from core.errors import UserError
from core.generate.requests import SamplingRequest, grid_request, image_params, png_params
from core.io import save_png
from core.protocol.jobs import JobStopped

JOB, GRID_JOB = "sampling", "grid"


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


def output_path(ctx: AppContext, req: SamplingRequest, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in req.class_name)
    interval = f"_i{req.guidance_interval[0]}-{req.guidance_interval[1]}" if req.guidance_interval else ""
    return (ctx.workspace.samples_dir / "lab" / safe /
            f"{safe}_seed{seed}_g{req.guidance_scale:g}{interval}_n{req.steps}_eta{req.eta:g}.png")


def preview_every(steps: int) -> int:
    """Decode the x0 prediction about five times per run: often enough to watch it form, rare
    enough that the VAE decode stays a small share of the sampling time."""
    return max(1, int(steps) // 5)


def _sample(ctx: AppContext, req: SamplingRequest, progress=None, stop=None, preview_every: int = 0):
    from core.generate.sampling import sample_seeds
    # never compiled: a preview of a few images would wait ~30 s for it (SamplingConfig.compile)
    return sample_seeds(ctx.workspace, ctx.config, req.class_name, req.seeds(), req.guidance_scale, req.steps,
                        req.eta, batch_size=max(1, req.batch_size), progress=progress, stop=stop, compile=False,
                        preview_every=preview_every, guidance_interval=req.guidance_interval or ())


def sampling_job(ctx: AppContext, req: SamplingRequest, events: "queue.Queue", progress=None, stop=None) -> dict:
    """Sample `req` in its batches, save each PNG with its parameters, push events to the UI queue."""
    done: list[str] = []

    def relay(info: dict) -> None:
        preview = info.pop("preview", None)
        progress({**info, "stage": JOB})
        if preview is not None:
            events.put(("preview", preview))
    for batch in _sample(ctx, req, relay, stop, preview_every(req.steps)):
        for seed, image in zip(batch.seeds, batch.images):
            params = image_params(req, seed, batch.params, batch.seeds, ctx.config.preset)
            path = save_png(image, output_path(ctx, req, seed), params)
            done.append(str(path))
            events.put(("image", str(path)))
    if stop is not None and stop.is_set():   # only whole finished images were kept and shown
        raise JobStopped()
    return {"paths": done}


def sample_into_gallery(ctx: AppContext, req: SamplingRequest) -> Iterator[tuple[list[str], Image.Image | None, str]]:
    """Handler core: yields (gallery paths, preview, status) as the sampling job advances."""
    if missing_models(ctx):
        raise UserError(hint(ctx))
    request_text("class_name", req.class_name, class_names(ctx))
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
             eta: float, events: "queue.Queue", progress=None, stop=None,
             guidance_interval: tuple[int, int] | None = None) -> dict:
    """One image per (class, scale) cell at the same seed; cells stream to the UI as they finish."""
    total = len(classes) * len(scales)
    for i, name in enumerate(classes):
        for j, scale in enumerate(scales):
            if stop is not None and stop.is_set():
                raise JobStopped()
            req = SamplingRequest(name, scale, steps, eta, seed, guidance_interval=guidance_interval)
            batch = next(iter(_sample(ctx, req, stop=stop)), None)
            if batch is None:                    # interrupted before the cell finished
                raise JobStopped()
            image = batch.images[0]
            save_png(image, output_path(ctx, req, seed), image_params(req, seed, batch.params, batch.seeds,
                                                                      ctx.config.preset))
            done = i * len(scales) + j + 1
            progress({"stage": GRID_JOB, "step": done, "total": total,
                      "message": f"cell {done}/{total}: {name} @ {scale:g}"})
            events.put(("cell", (i, j, image)))
    return {"cells": total}


def sample_scale_grid(ctx: AppContext, classes: list[str], scales_text: str, seed: int, steps: int,
                      eta: float, guidance_interval: tuple[int, int] | None = None
                      ) -> Iterator[tuple[Image.Image | None, str]]:
    """Handler core: yields the growing class × guidance-scale grid and the status."""
    asked = grid_request(classes, scales_text, seed, steps, eta, class_names(ctx))
    classes, scales, seed, steps, eta = (asked[k] for k in ("classes", "scales", "seed", "steps", "eta"))
    if missing_models(ctx) or not classes:
        raise UserError(hint(ctx))
    canvas, cells = None, {}
    for kind, payload in stream(ctx, GRID_JOB, grid_job, classes=classes, scales=scales, seed=int(seed),
                                steps=int(steps), eta=float(eta), guidance_interval=guidance_interval):
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
                          "steps": int(steps), "eta": float(eta), "scheduler": ctx.config.sampling.sampler,
                          **({"guidance_interval": list(guidance_interval)} if guidance_interval else {})}
                save_png(canvas, ctx.workspace.samples_dir / "lab" / f"grid_seed{int(seed)}.png", params)
            yield canvas, job_markdown(payload)


def params_of(ctx: AppContext, path_text: str) -> dict[str, Any]:
    """Parameters stored in a PNG inside the workspace or a data root."""
    return png_params(ctx.resolve_path(path_text, field_name="PNG path"))

