"""Tab 2 — guidance-scale sampling, the layout: gallery filling as images finish, a streamed
denoising preview, a class × guidance-scale grid at one seed, parameters in every PNG,
regenerate one from its seed. The work is app/sampling_jobs.py's (jobs in the shared compute
slot); the handlers here only turn widget values into its calls.
"""
from __future__ import annotations

import gradio as gr

from app import quality_panel, widgets
from app.context import COMPUTE, AppContext, SessionValues, stop_job
from app.sampling_jobs import GRID_JOB, JOB, class_names, hint, params_of, sample_into_gallery, sample_scale_grid
from core.errors import UserError
from core.generate.requests import parse_interval, request_from_params, sampling_request
from core.io import read_png_params


def build(ctx: AppContext) -> dict:
    cfg = ctx.config.sampling
    classes = class_names(ctx)
    hint_md = gr.Markdown(hint(ctx), elem_id="sampling-hint")
    with gr.Row():
        fields = {
            "class_name": widgets.dropdown(classes, value=classes[0] if classes else None, label="class",
                                      allow_custom_value=False),
            "guidance_scale": widgets.slider(0, 30, value=cfg.guidance_scale, step=0.5, label="guidance scale",
                                        elem_id="guidance-slider"),
            "steps": widgets.slider(1, 200, value=cfg.steps, step=1, label="steps", elem_id="steps-slider"),
            "eta": widgets.slider(0, 1, value=cfg.eta, step=0.05, label="eta (DDIM)"),
        }
        interval_text = gr.Textbox(", ".join(str(t) for t in cfg.guidance_interval), max_lines=1,
                                   label="guidance interval: timesteps LO, HI (empty = every step)",
                                   elem_id="guidance-interval")
    intervals = SessionValues(interval_text.value)
    with gr.Row():
        fields["seed"] = widgets.number(-1, label="seed (-1 = random)", precision=0)
        fields["num_images"] = widgets.slider(1, 64, value=4, step=1, label="number of images",
                                         elem_id="num-images-slider")
        fields["batch_size"] = widgets.slider(1, 32, value=min(4, cfg.batch_size), step=1, label="batch size")
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
            grid_classes = widgets.dropdown(classes, value=classes, multiselect=True, label="classes")
            grid_scales = gr.Textbox("0, 2.5, 5, 10", label="guidance scales")
            grid_seed = widgets.number(0, label="seed", precision=0)
            grid_btn = gr.Button("Make grid")
        grid_image = gr.Image(label="grid", type="pil", interactive=False)
    sweep = quality_panel.build_sweep(ctx)

    # Gradio names an endpoint's API parameters after the handler's own parameters
    def on_interval(interval: str, request: gr.Request) -> None:
        """Set the guidance interval this session's /sample, /grid use (the config's until set).

        Args:
            interval: "LO, HI" timesteps; empty for every timestep
        """
        try:
            parse_interval(interval)
        except UserError as e:
            raise gr.Error(str(e)) from e
        intervals.set(request, interval)

    def on_generate(class_name, guidance_scale, steps, eta, seed, num_images, batch_size, request: gr.Request):
        """Sample images of one class with classifier guidance; streams (gallery, preview, status).

        Args:
            class_name: a class of the labeled set
            guidance_scale: classifier-guidance scale (0 = unguided)
            steps: DDIM steps
            eta: DDIM eta (0 = deterministic, 1 = DDPM-like)
            seed: seed of the first image (image k uses seed + k); -1 draws a random one
            num_images: how many images
            batch_size: images sampled together (a seed's pixels depend slightly on its batch)
            request: the session, whose guidance interval is used (set by /guidance_interval)
        """
        try:
            req = sampling_request(class_name or "", guidance_scale, steps, eta, seed, num_images, batch_size,
                                   parse_interval(intervals.get(request)))
            yield from sample_into_gallery(ctx, req)
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
        if not params:
            raise gr.Error("select an image or load a PNG's parameters first")
        try:
            yield from sample_into_gallery(ctx, request_from_params(params))
        except UserError as e:
            raise gr.Error(str(e)) from e

    def on_grid(classes, guidance_scales, seed, steps, eta, request: gr.Request):
        try:
            yield from sample_scale_grid(ctx, classes, guidance_scales, seed, steps, eta,
                                         parse_interval(intervals.get(request)))
        except UserError as e:
            raise gr.Error(str(e)) from e

    outputs = [gallery, preview, status_md]
    # not a /sample parameter: scripts keep calling /sample as they did (raw HTTP included)
    interval_text.blur(on_interval, interval_text, None, queue=False, api_name="guidance_interval")
    interval_text.submit(on_interval, interval_text, None, queue=False, api_visibility="private")
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
    stop_btn.click(lambda: stop_job(ctx, (JOB, GRID_JOB)), None, status_md, queue=False,
                   api_name="sample_stop", cancels=[gen, regen, grid_ev])

    refresh_sweep, sweep_outputs = sweep["refresh"]

    def refresh():
        names_now = class_names(ctx)
        value = names_now[0] if names_now else None
        return (hint(ctx), gr.update(choices=names_now, value=value),
                gr.update(choices=names_now, value=names_now), *refresh_sweep())

    return {"refresh": (refresh, [hint_md, fields["class_name"], grid_classes, *sweep_outputs])}
