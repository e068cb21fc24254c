"""Stage markers: when a stage of `core run` is done for a config, and which synthetic rows it made.

A marker (stages/STAGE.json) holds a key hashed from the sub-configs the stage depends on and the
output hashes of the stages it reads; a stage whose key matches and whose outputs still hash the
same is skipped, so a killed run resumes at the first unfinished stage (the trainers themselves
resume from their checkpoints). The shared stages (data, autoencoder, pretrain) keep their
markers at the workspace root; the label-trained ones in their budget's folder (core.data.budget).
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd

from core.config.lab_config import LabConfig
from core.config.store import config_hash, identity
from core.generate.sampling import made_by_config
from core.io import atomic_write_json, folder_hash
from core.workspace import Workspace

SHARED = ("data", "autoencoder", "pretrain")
PER_BUDGET = ("latent_classifier", "filter_classifier", "sampling", "scoring", "selection")
PIPELINE = SHARED + PER_BUDGET
# stage -> (config sections it reads, upstream stages whose outputs it reads)
DEPENDS = {
    "data": (("data",), ()),
    "autoencoder": (("autoencoder", "data"), ("data",)),
    "pretrain": (("pretrain",), ("autoencoder",)),
    "latent_classifier": (("latent_classifier",), ("pretrain", "data")),
    "filter_classifier": (("filter_classifier",), ("data",)),
    "sampling": (("sampling",), ("latent_classifier",)),
    "scoring": ((), ("filter_classifier", "sampling")),
    "selection": (("selection",), ("scoring",)),
}
# the name a section keys under: the name it was saved with before the one-term-per-concept
# renames, so finished workspaces (and the demo bundle) stay done
KEY_NAMES = {"latent_classifier": "classifier", "filter_classifier": "classify"}
LABELED = ("latent_classifier", "filter_classifier")     # stages that read the budget's labels
MODEL_STAGES = ("autoencoder", "pretrain", "latent_classifier")    # the ones saving pipeline components


def _owner(ws: Workspace, stage: str) -> Workspace:
    return Workspace(ws.root) if stage in SHARED else ws


def stage_outputs(ws: Workspace, stage: str) -> list[Path]:
    return {
        "data": [ws.split_manifest, ws.pools_file],
        "autoencoder": [ws.autoencoder_dir],
        "pretrain": [ws.unet_dir, ws.scheduler_dir],
        "latent_classifier": [ws.latent_classifier_dir] + (
            [ws.finetuned_unet_dir] if ws.finetuned_unet_dir.exists() else []),
        "filter_classifier": [ws.filter_classifier_dir],
        "sampling": [ws.synthetic_manifest],
        "scoring": [ws.synthetic_scores],
        "selection": [ws.accepted_manifest],
    }[stage]


def output_hash(ws: Workspace, stage: str, cfg: LabConfig | None = None) -> str | None:
    """Content hash of a stage's outputs; None when any is missing. With `cfg`, the synthetic
    tables count only the rows of images this config's sampling stage made (`made_by_config`):
    images the app adds at other guidance scales, top-up images the experiment adds later, and
    rows a demo bundle leaves out, do not make the stage stale."""
    parts = []
    for p in stage_outputs(ws, stage):
        if p.is_dir():
            if not any(p.iterdir()):
                return None
            parts.append(folder_hash(p, "*.safetensors") + folder_hash(p, "*.json"))
        elif p.is_file():
            # tables hold absolute paths: hash them relative to the workspace, so a workspace
            # moved or installed elsewhere (core.protocol.demo_models) keeps its stage markers valid
            text = p.read_text(encoding="utf-8").replace(str(ws.root), "<ws>")
            if cfg is not None and p.parent == ws.synthetic_dir:
                text = _rows_made_by(ws, cfg, text)
            parts.append(config_hash(text))
        else:
            return None
    return config_hash(parts)


def _rows_made_by(ws: Workspace, cfg: LabConfig, text: str) -> str:
    # read as text (dtype=str): the hash sees the rows as written, with no float reformatting
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if "file" in frame:
        frame = frame.drop_duplicates("file", keep="last")     # as read_manifest: a re-made file's latest row
    rows = frame[made_by_config(ws, cfg, frame, topup=False)]
    return (rows.sort_values("file", kind="stable") if "file" in rows else rows).to_csv(index=False)


def _budget_extra(ws: Workspace, cfg: LabConfig, stage: str):
    if stage not in LABELED:
        return None
    from core.data.budget import budget_of
    return {"label_budget": budget_of(ws, cfg), "subset_seed": cfg.data.seed}


def stage_key(ws: Workspace, cfg: LabConfig, stage: str, extra=None) -> str:
    sections, upstream = DEPENDS[stage]
    extra = extra if extra is not None else _budget_extra(ws, cfg, stage)
    return config_hash(stage, {KEY_NAMES.get(s, s): identity(getattr(cfg, s)) for s in sections},
                       {u: read_marker(ws, u).get("output_hash") for u in upstream}, extra)


def marker_file(ws: Workspace, stage: str) -> Path:
    return _owner(ws, stage).marker_file(stage)


def read_marker(ws: Workspace, stage: str) -> dict:
    path = marker_file(ws, stage)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}     # a damaged marker means "not done"; the stage reruns


def is_done(ws: Workspace, cfg: LabConfig, stage: str, extra=None) -> bool:
    marker = read_marker(ws, stage)
    return bool(marker) and marker.get("key") == stage_key(ws, cfg, stage, extra) \
        and marker.get("output_hash") == output_hash(_owner(ws, stage), stage, cfg)


def mark_done(ws: Workspace, cfg: LabConfig, stage: str, result, seconds: float, extra=None) -> dict:
    sections, upstream = DEPENDS[stage]
    marker = {"stage": stage, "key": stage_key(ws, cfg, stage, extra),
              "output_hash": output_hash(_owner(ws, stage), stage, cfg),
              "config_hash": config_hash(*(getattr(cfg, s) for s in sections)),
              "inputs": {u: read_marker(ws, u).get("output_hash") for u in upstream},
              "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "result": _jsonable(result)}
    atomic_write_json(marker_file(ws, stage), marker)
    if stage in MODEL_STAGES:
        _index_pipeline(ws)
    return marker


def _index_pipeline(ws: Workspace) -> None:
    """models/model_index.json once every pipeline component is saved there, so the folder loads
    with `GuidedLatentPipeline.from_pretrained` as it stands."""
    from core.models.load import missing_models
    root = Workspace(ws.root)
    if not missing_models(root):
        from core.generate.loading import write_model_index
        write_model_index(root.models_dir)


def _jsonable(result):
    if isinstance(result, pd.DataFrame):
        return {"rows": len(result)}
    if isinstance(result, dict):
        return json.loads(json.dumps(result, default=str))
    return None
