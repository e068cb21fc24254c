"""The Gradio lab: four tabs over one workspace, sharing one compute slot (see app/context.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gradio is imported inside create_app so `app.context` stays importable cheaply
    import gradio as gr

    from app.context import AppContext

CSS = """
.job-progress progress { height: 14px; }
#sampling-gallery, #selection-gallery { min-height: 200px; }
"""


def create_app(ctx: "AppContext") -> "gr.Blocks":
    """Build the four-tab lab for `ctx`; every tab fills itself from the workspace on page load."""
    import gradio as gr

    from app import tab_pretrain, tab_results, tab_sampling, tab_selection

    tabs = [("1 · Pre-training", tab_pretrain), ("2 · Guidance-scale sampling", tab_sampling),
            ("3 · Confidence threshold", tab_selection), ("4 · Augmentation vs baseline", tab_results)]
    # delete_cache: outputs copied into the cache are removed after a day and at shutdown
    with gr.Blocks(title="HistoDiffusion Lab", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"## HistoDiffusion Lab\nWorkspace `{ctx.workspace.root}` · preset "
                    f"`{ctx.config.preset}` · one compute slot shared by all tabs")
        refreshers = []
        with gr.Tabs():
            for title, module in tabs:
                with gr.Tab(title, id=module.__name__.rsplit(".", 1)[-1]):
                    refreshers.append(module.build(ctx))
        for entry in refreshers:
            fn, outputs, *inputs = entry["refresh"]
            # the page (re)load reads the server-side state: a running job and the workspace files
            demo.load(fn, inputs[0] if inputs else None, outputs, show_progress="hidden",
                      api_visibility="private")
    return demo


# The UI takes no uploads (paths are typed); Gradio's /upload route exists anyway, so cap it.
MAX_UPLOAD = "5mb"


def served_dirs(ctx: "AppContext") -> list[str]:
    """The workspace folders whose files the UI shows (sample grids, galleries, results CSV).
    Models, checkpoints, configs, labeled data and the --data-root folders are never served."""
    ws = ctx.workspace
    return [str(p) for p in (ws.samples_dir, ws.synthetic_dir, ws.accepted_dir, ws.results_dir)]


def launch_kwargs(ctx: "AppContext") -> dict:
    """Launch options every caller needs: only `served_dirs` may be fetched, uploads are capped,
    failed logins slow the next ones down (app.auth.LoginThrottle)."""
    from starlette.middleware import Middleware

    from app.auth import LoginThrottle
    return {"allowed_paths": served_dirs(ctx), "max_file_size": MAX_UPLOAD, "css": CSS,
            "app_kwargs": {"middleware": [Middleware(LoginThrottle)]}}


def fresh_upload_cache(ctx: "AppContext") -> Path:
    """Point Gradio's upload/output cache at this workspace's own folder and empty it.

    Gradio's `delete_cache` only removes files the running server made; copies left by a killed
    server (outputs and anything uploaded) would stay servable, so the folder starts empty.
    Must run before the Blocks are built: each block reads GRADIO_TEMP_DIR once."""
    folder = ctx.workspace.cache_dir / "gradio"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder
