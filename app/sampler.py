"""The sampling tab's call into the pipeline: images for a few seeds, decoded x0 previews as the
denoising goes, and Stop, on diffusers' callback_on_step_end / `pipe._interrupt`."""
from __future__ import annotations

import threading
from typing import Callable

from core.config.lab_config import LabConfig
from core.generate.pipeline import load_pipeline
from core.generate.pipeline import interrupt_when
from core.workspace import Workspace


def sample_images(ws: Workspace, cfg: LabConfig, class_name: str, seeds: list[int], guidance_scale: float,
                  steps: int, eta: float, callback: Callable | None = None, preview_every: int = 0,
                  stop: threading.Event | None = None, scheduler: str | None = None) -> list:
    """PIL images for `seeds`; callback(step, total, preview) gets decoded x0 predictions every
    `preview_every` steps (None otherwise) and may return False to interrupt. An interrupted
    call returns the images of the batches that finished."""
    # never compiled: a preview of a few images would wait ~30 s for it (SamplingConfig.compile)
    pipe = load_pipeline(ws, cfg, compile=False, sampler=scheduler or cfg.sampling.sampler)
    label = pipe.get_label_ids(class_name)[0]
    # in sampling.batch_size chunks, as `generate` batches: batched kernels round differently,
    # so the same chunks give the dataset's pixels
    size = cfg.sampling.batch_size
    total, done, images = int(steps) * -(-len(seeds) // size), 0, []

    def relay(pipe, i: int, t, tensors: dict) -> dict:
        nonlocal done
        done += 1
        if callback is not None:
            show = preview_every > 0 and (done % preview_every == 0 or done == total)
            if callback(done, total, pipe.decode(tensors["denoised"]) if show else None) is False:
                pipe._interrupt = True
        return tensors

    for lo in range(0, len(seeds), size):
        out = pipe(label, seeds=seeds[lo:lo + size], guidance_scale=guidance_scale, num_inference_steps=steps,
                   eta=eta, callback_on_step_end=interrupt_when(stop, relay),
                   callback_on_step_end_tensor_inputs=["denoised"])
        images += out.images
        if out.interrupted:
            break
    return images
