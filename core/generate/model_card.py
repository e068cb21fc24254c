"""The model card (README.md) of a saved GuidedLatentPipeline folder, so an exported model says
what it is and what made it: the Hub's YAML metadata, the components and classes, how to load
it, the data it was trained on (the pools and the labeled splits), the LabConfig, and what the
workspace measured (results/summary.md, results/quality.csv) when it has.

Everything is read from the saved folder and the workspace files, never from live models, so a
bundle export can write the card without loading (and re-saving) any weights."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import ModelCard, ModelCardData

from core.workspace import LAB_CONFIG, Workspace

TAGS = ["classifier-guidance", "latent-diffusion", "histopathology", "histodiffusion-lab"]


def write_model_card(folder: str | Path, ws: Workspace | None = None, license: str = "other") -> Path:
    """Write `folder`/README.md for the pipeline saved in `folder`; `ws` is the workspace that
    trained it (its data, config and results; without one those sections say so).

    Args:
        folder (`str` or `Path`): a saved pipeline (with model_index.json).
        ws (`Workspace`, *optional*, defaults to `None`): the workspace that trained it.
        license (`str`, *optional*, defaults to `"other"`): the card's license tag.

    Returns:
        `Path`: the README.md written (a Hugging Face model card).
    """
    folder = Path(folder)
    index = json.loads(Workspace.model_index_of(folder).read_text())
    pipeline_class = index.get("_class_name", "GuidedLatentPipeline")
    data = ModelCardData(library_name="diffusers", license=license, tags=["diffusers", f"diffusers:{pipeline_class}"])
    card = populate_model_card(ModelCard(f"---\n{data.to_yaml()}\n---\n"), tags=TAGS)
    sections = [_overview(folder, index, pipeline_class), _usage(pipeline_class), _data_sources(ws),
                _configuration(ws), _results(ws)]
    card.text = "\n\n".join(s.strip() for s in sections) + "\n"
    path = Workspace.model_card_of(folder)
    card.save(path)
    return path


def _overview(folder: Path, index: dict, pipeline_class: str) -> str:
    rows = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        rows.append({"component": f"`{name}/`", "class": f"`{spec[0]}.{spec[1]}`",
                     "parameters": _parameters(folder / name)})
    classes = _config(Workspace.config_of(folder / "latent_classifier")).get("class_names", [])
    size = _config(Workspace.config_of(folder / "unet")).get("sample_size")
    return (f"# {pipeline_class}: class-guided latent diffusion for histology patches\n\n"
            "An unconditional latent-diffusion UNet over a KL autoencoder, steered toward a tissue class "
            "at sampling time by the gradient of a noise-aware latent classifier (classifier guidance, "
            "Dhariwal & Nichol 2021), trained with HistoDiffusion Lab to make synthetic training images "
            "for a patch classifier.\n\n"
            + (f"Classes (class id = position): {', '.join(f'`{c}`' for c in classes)}. " if classes else "")
            + (f"Latents are {size}x{size}." if size else "")
            + "\n\n" + markdown_table(pd.DataFrame(rows)))


def _usage(pipeline_class: str) -> str:
    return ("## How to use\n\n"
            "The pipeline class lives in HistoDiffusion Lab's `core` package (on `sys.path`); diffusers "
            "imports the classifier's class from the module model_index.json names, without remote code.\n\n"
            "```python\nimport torch\n"
            f"from core import {pipeline_class}\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"PATH/TO/THIS/FOLDER\")  # mixed_precision=\"bf16\", ...\n"
            "out = pipe(class_ids=[0, 1], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],\n"
            "           guidance_scale=3.0, num_inference_steps=25)\n"
            "out.images[0].save(\"sample.png\")\n```")


def _data_sources(ws: Workspace | None) -> str:
    out = ["## Data sources"]
    pools = ws.pools_file if ws is not None else None
    if pools is not None and pools.exists():
        frame = pd.read_csv(pools)
        table = frame.groupby("pool", sort=False).agg(images=("path", "size"), weight=("weight", "first"))
        out.append("Unlabeled pre-training pools (`data/pools.csv`; each pool drawn with its weight's share "
                   "whatever its size):\n\n" + markdown_table(table.reset_index()))
    else:
        out.append("No pool table (`data/pools.csv`) was found beside this model.")
    splits = ws.split_manifest if ws is not None else None
    if splits is not None and splits.exists():
        frame = pd.read_csv(splits)
        table = frame.pivot_table(index="class_name", columns="split", values="path", aggfunc="size", fill_value=0)
        out.append("Labeled images per class and split (`data/splits.csv`; the latent classifier saw the "
                   "train split of its label budget):\n\n" + markdown_table(table.reset_index()))
    return "\n\n".join(out)


def _configuration(ws: Workspace | None) -> str:
    source = None
    if ws is not None:
        candidates = [ws.latent_classifier_dir / LAB_CONFIG, ws.unet_dir / LAB_CONFIG,
                      ws.autoencoder_dir / LAB_CONFIG, ws.config_file]
        source = next((p for p in candidates if p.exists()), None)
    if source is None:
        return "## Configuration\n\nThe LabConfig that made this model was not found."
    where = ws.relative(source)
    config = json.dumps(json.loads(source.read_text()), indent=2, sort_keys=True)
    return (f"## Configuration\n\nThe LabConfig the last component was trained under (`{where}`; load it "
            f"with `core.config.load_config`):\n\n```json\n{config}\n```")


def _results(ws: Workspace | None) -> str:
    out = []
    summary = ws.summary_md if ws is not None else None
    if summary is not None and summary.exists():
        out.append("## Accuracy: every arm vs the baseline\n\nFrom `results/summary.md` (a patch classifier trained "
                   "on real labels alone, and with added synthetic or pseudo-labelled images):\n\n"
                   + summary.read_text().strip())
    if ws is not None and ws.quality_csv.exists():
        out.append("## Sample quality\n\nFrom `results/quality.csv` (each number beside its real-vs-real "
                   "floor):\n\n" + markdown_table(pd.read_csv(ws.quality_csv)))
    return "\n\n".join(out) or "## Results\n\nNo results (`results/summary.md`, `results/quality.csv`) yet."


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style table (pandas' to_markdown needs tabulate, which the lab does not install)."""
    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _parameters(component: Path) -> str:
    """Parameter count from the safetensors headers (shapes only: no weights are read)."""
    from safetensors import safe_open
    total = 0
    for weights in sorted(component.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return f"{total / 1e6:.2f} M" if total else "-"
