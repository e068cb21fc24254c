"""The Gradio lab: four tabs over one workspace, sharing one compute slot (see app/context.py)."""
from __future__ import annotations

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
    with gr.Blocks(title="HistoDiffusion Lab") as demo:
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


def launch_kwargs(ctx: "AppContext") -> dict:
    """Launch options every caller needs: the workspace and data roots are the only served dirs."""
    return {"allowed_paths": [str(p) for p in ctx.allowed_roots], "css": CSS}
