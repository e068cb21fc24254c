"""A small bundle of a finished demo run (models, synthetic set + scores, results, config) and
its installer, so the app opens on a fresh machine with everything to look at and no training.

`python -m core export-demo --workspace DIR --to assets/demo_models` writes the bundle;
`install_demo(bundle, ws)` lays it into a workspace. Every file is listed in bundle.json with
its SHA-256, so a damaged or half-copied bundle is refused with the files named. A file whose
bytes the bundle already holds (the arms of one seed saw the same labels) is stored once and
listed under "copies"; the installer lays it out again.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.io import atomic_dir, atomic_write_json, file_sha256
from core.workspace import LEGACY_MODEL_DIRS, Workspace, migrate_layout

MODEL_FILES = ("*.safetensors", "*.json", "*.csv")
MANIFEST = "bundle.json"


def _shared_models(ws: Workspace) -> list[Path]:
    return [ws.autoencoder_dir, ws.unet_dir, ws.scheduler_dir]


def _label_models(ws: Workspace) -> list[Path]:
    # the fine-tuned UNet whenever it is there: the latent classifier stage's marker hashes it then
    tuned = [ws.finetuned_unet_dir] if Workspace.config_of(ws.finetuned_unet_dir).exists() else []
    return [ws.latent_classifier_dir, ws.filter_classifier_dir] + tuned


def _model_files(folder: Path) -> list[tuple[Path, str]]:
    if not Workspace.config_of(folder).exists() and not any(folder.glob("*.json")):
        raise UserError(f"cannot export: {folder} has no model (finish `python -m core run` first)")
    return [(p, p.relative_to(folder).as_posix()) for pattern in MODEL_FILES for p in sorted(folder.rglob(pattern))]


def _budget_parts(ws: Workspace, include_images: bool) -> dict[str, list[tuple[Path, str]]]:
    """One label budget's files (its models, synthetic tables, accepted set, markers, labels),
    keyed by their folder relative to the workspace root."""
    prefix = "" if not ws.scope else f"budgets/{ws.scope}/"
    out = {ws.relative(folder): _model_files(folder) for folder in _label_models(ws)}
    tables = {ws.synthetic_dir: [ws.synthetic_manifest, ws.synthetic_scores],
              ws.accepted_dir: [ws.accepted_manifest]}
    for root, paths in tables.items():
        top = root.name
        for path in paths:
            if not path.exists():
                raise UserError(f"cannot export: {path} is missing (finish `python -m core run` first)")
        files = [(path, path.relative_to(root).as_posix()) for path in paths]
        if top == "synthetic":      # per-class calibration, which the Selection tab shows
            files += [(p, p.name) for p in (ws.selection_thresholds, ws.val_scores) if p.exists()]
        if top == "accepted" and include_images:    # the selection stage's export, so it stays done
            files += [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*.png"))]
        if top == "synthetic" and include_images and not ws.scope:   # other budgets: accepted copies only
            current = _current_files(ws)
            files += [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*.png"))
                      if p.relative_to(root).as_posix() in current]
        out[prefix + top] = files
    out[prefix + "stages"] = [(p, p.name) for p in ws.marker_files()]
    out[prefix + "metrics"] = [(p, p.name) for p in ws.metrics_files()]
    if ws.labels_file.exists():
        out.setdefault(prefix.rstrip("/") or ".", []).append((ws.labels_file, ws.labels_file.name))
    return out


def _parts(ws: Workspace, include_images: bool) -> dict[str, list[tuple[Path, str]]]:
    """bundle-relative destination folder -> list of (source file, relative name)."""
    from core.data.budget import budget_views
    from core.config.store import load_config
    if not ws.config_file.exists():
        raise UserError(f"cannot export: {ws.config_file} is missing")
    out: dict[str, list[tuple[Path, str]]] = {ws.relative(d): _model_files(d) for d in _shared_models(ws)}
    out["."] = [(ws.config_file, ws.relative(ws.config_file))]
    for _, view in budget_views(ws, load_config(ws.config_file)):
        for top, files in _budget_parts(view, include_images).items():
            out.setdefault(top, []).extend(files)
    results = ws.results_dir
    for path in (ws.runs_csv, ws.summary_json):
        if not path.exists():
            raise UserError(f"cannot export: {path} is missing (finish `python -m core run` first)")
    out["results"] = [(p, p.relative_to(results).as_posix()) for p in sorted(results.rglob("*")) if p.is_file()]
    # training curves and EMA sample grids, so the pre-training tab opens populated too
    out["samples"] = [(p, p.relative_to(ws.samples_dir).as_posix())
                      for p in sorted((ws.samples_dir / "pretrain").glob("*.png"))]
    return out


def _current_files(ws: Workspace) -> set[str]:
    """Synthetic images made by the workspace's own config for this budget (the folder may also
    hold images from other guidance scales the lab generated); only those go into the bundle."""
    from core.config.store import load_config
    from core.evaluate.selection import current_selection
    rows = current_selection(ws, load_config(ws.config_file))
    return set(rows["file"].astype(str))


def _filter_tables(bundle: Workspace, keep: set[str]) -> None:
    for path in (bundle.synthetic_manifest, bundle.synthetic_scores):
        # as text (dtype=str): the kept rows stay byte for byte as written, so the stage markers'
        # row hashes (core.protocol.stages.output_hash) still match them
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame[frame["file"].isin(keep)].to_csv(path, index=False)


def export_demo(ws: Workspace, to: str | Path, include_images: bool = True) -> dict:
    """Copy a finished run into `to` (replaced whole, atomically); returns the bundle listing."""
    to = Path(to)
    parts = _parts(ws, include_images)
    listing: dict[str, str] = {}
    with atomic_dir(to) as tmp:
        for top, files in parts.items():
            for src, rel in files:
                dest_rel = rel if top == "." else f"{top}/{rel}"
                dest = tmp / dest_rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
        if include_images:
            from core.data.budget import budget_views
            from core.config.store import load_config
            for _, view in budget_views(ws, load_config(ws.config_file)):
                # the bundle has a workspace's layout: the same view of it names its tables
                _filter_tables(Workspace(tmp, view.scope), _current_files(view))
        for top, files in parts.items():
            for _, rel in files:
                dest_rel = rel if top == "." else f"{top}/{rel}"
                listing[dest_rel] = file_sha256(tmp / dest_rel)
        for path in _pipeline_files(ws, tmp / ws.relative(ws.models_dir)):
            listing[path.relative_to(tmp).as_posix()] = file_sha256(path)
        copies = _store_once(tmp, listing)
        info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "source_workspace": str(ws.root),
                "files": listing, "copies": copies,
                "bytes": sum((tmp / r).stat().st_size for r in listing if r not in copies)}
        atomic_write_json(tmp / MANIFEST, info)
    return info


def _store_once(bundle: Path, listing: dict[str, str]) -> dict[str, str]:
    """Delete each repeat of a file's bytes outside model folders (each stays loadable as it
    stands) and the root; returns {repeat: the stored file with the same bytes}."""
    first: dict[str, str] = {}
    copies: dict[str, str] = {}
    for rel, sha in sorted(listing.items(), key=lambda kv: (kv[0].startswith(("accepted/", "budgets/")), kv[0])):
        if "/" not in rel or rel.startswith("models/") or "/models/" in rel:
            first.setdefault(sha, rel)
        elif sha in first:
            copies[rel] = first[sha]
            (bundle / rel).unlink()
        else:
            first[sha] = rel
    return copies


def _pipeline_files(ws: Workspace, models: Path) -> list[Path]:
    """The bundle's models/ as a loadable, self-describing pipeline folder: model_index.json and
    the model card, written into the bundle (the workspace itself is left as it is)."""
    from core.generate.model_card import write_model_card
    from core.generate.loading import write_model_index
    return [write_model_index(models), write_model_card(models, ws)]


def verify_bundle(bundle: str | Path) -> dict:
    bundle = Path(bundle)
    manifest = bundle / MANIFEST
    if not manifest.exists():
        raise UserError(f"{bundle} is not a demo bundle ({MANIFEST} is missing)")
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{manifest} is damaged: {e}") from None
    copies = info.get("copies", {})
    bad = [rel for rel, sha in info["files"].items()
           if not (bundle / copies.get(rel, rel)).is_file() or file_sha256(bundle / copies.get(rel, rel)) != sha]
    if bad:
        raise UserError(f"demo bundle {bundle} is damaged or incomplete: {', '.join(bad[:10])}"
                        + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
    return info


def install_demo(bundle: str | Path, ws: Workspace, overwrite: bool = False, build_data: bool = True) -> dict:
    """Lay a verified bundle into `ws`: models, synthetic set + scores, results, stage markers,
    config; then the demo data is rebuilt from assets/ (deterministic, seconds) so the data and
    results views work. Existing trained models are never replaced unless `overwrite`."""
    bundle = Path(bundle)
    info = verify_bundle(bundle)
    ws.ensure()
    existing = [p for p in _shared_models(ws) + _label_models(Workspace(ws.root)) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"workspace {ws.root} already has models ({', '.join(p.name for p in existing)}); "
                        "pass overwrite=True (CLI: --overwrite) to replace them")
    tops = sorted({rel.split("/", 1)[0] if "/" in rel else "." for rel in info["files"]})
    for top in tops:
        if top == ".":
            continue
        if top == "models":
            _install_models(bundle / top, ws.models_dir)
            continue
        with atomic_dir(ws.root / top) as tmp:
            shutil.copytree(bundle / top, tmp, dirs_exist_ok=True)
            for rel, stored in info.get("copies", {}).items():
                if rel.startswith(top + "/"):
                    dest = tmp / rel.split("/", 1)[1]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(bundle / stored, dest)
    migrate_layout(ws.root)     # a bundle exported with older folder names brings them
    source = Workspace(bundle, migrate=False)      # the bundle has a workspace's layout; never written
    for path in (source.config_file, source.labels_file):
        if path.exists():
            shutil.copy2(path, ws.root / source.relative(path))
    data = None
    if build_data:
        from core.config.store import load_config
        from core.data.demo import build_demo
        data = build_demo(ws, load_config(ws.config_file))
    return {"installed": len(info["files"]), "bytes": info["bytes"], "workspace": str(ws.root),
            "data": None if data is None else {k: data.get(k) for k in ("classes", "counts", "skipped")}}


def _install_models(src: Path, models: Path) -> None:
    """Each model folder replaced whole (under its current name), then the pipeline's own files."""
    for item in sorted(src.iterdir()):
        if item.is_dir():
            with atomic_dir(models / LEGACY_MODEL_DIRS.get(item.name, item.name)) as tmp:
                shutil.copytree(item, tmp, dirs_exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.is_file():
            shutil.copy2(item, models / item.name)

