"""One command from data to an honest accuracy table: every stage, skip-by-hash, the protocol grid.

Shared stages (data, autoencoder, pretrain) run once; the label-trained ones (latent classifier,
filter classifier, sampling, scoring, selection) once per label budget, each on exactly the
budget's labeled subset (core.data.budget), skipped when their marker says done (core.protocol.stages). Then
each budget's short classes are topped up (core.protocol.topup) and the grid runs (core.protocol.grid):
per seed a baseline and each arm per ratio, on the budget's labels and the baseline's real batches.
Each run appends one row to results/runs.csv and writes results/runs/KEY/; a rerun skips rows
whose run key is already there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from core.data.budget import budget_labels, budget_name, budget_views, realised
from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import save_config, to_dict
from core.io import atomic_write_json, atomic_write_text
from core.evaluate.metrics import at_chance
from core.evaluate.selection import current_selection
from core.protocol.sources import choose_sources
from core.protocol.stages import PER_BUDGET, SHARED, is_done, mark_done, read_marker
from core.evaluate.summary import summarize
from core.evaluate.summary_tables import markdown_table
from core.protocol import grid
from core.protocol.grid import plan_runs, run_keys, selection_checks  # noqa: F401  (public: core.protocol.experiment.run_keys)
from core.protocol.topup import class_wants, draw_synthetic, threshold_of, top_up  # noqa: F401
from core.workspace import Workspace

def _stopped(result, stop) -> bool:
    if stop is not None and stop.is_set():
        return True
    if isinstance(result, dict):
        return bool(result.get("stopped"))
    return bool(getattr(result, "attrs", {}).get("stopped"))


# --- data sources -----------------------------------------------------------------------------

def source_fingerprint(paths) -> list:
    """Cheap identity of user sources (path, file count, bytes, newest mtime): a changed folder
    reruns the data stage without hashing every image."""
    out = []
    for p in paths:
        p = Path(p)
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else ([p] if p.exists() else [])
        if not files:
            raise UserError(f"data source {p} does not exist or holds no files")
        stats = [f.stat() for f in files]
        out.append([str(p.resolve()), len(files), sum(s.st_size for s in stats),
                    max(s.st_mtime_ns for s in stats)])
    return out


def run_data(ws: Workspace, cfg: LabConfig, labeled, test, unlabeled, progress=None, stop=None) -> dict:
    from core.data.demo import build_demo
    from core.data.labeled import prepare_labeled
    from core.data.pools import LABELED_POOL, pool_labeled_images, prepare_pools
    if labeled is None:                  # the demo pools its own labeled bands (build_demo)
        return {"labeled": build_demo(ws, cfg, progress=progress)}
    result = {"labeled": prepare_labeled(ws, cfg, labeled, test)}
    if unlabeled:
        result["pools"] = prepare_pools(ws, cfg, list(unlabeled), progress=progress, stop=stop)
    if cfg.data.pool_labeled_images:
        result.setdefault("pools", {}).setdefault("pools", {})[LABELED_POOL] = pool_labeled_images(ws)
    elif not unlabeled:
        raise UserError("no unlabeled data for pre-training: pass --unlabeled PATH, or leave "
                        "data.pool_labeled_images on")
    return result


def stage_functions(labeled, test, unlabeled):
    from core.train import autoencoder, filter_classifier, latent_classifier, pretrain
    from core.generate import sampling
    from core.evaluate import selection

    def select_and_export(ws, cfg, progress=None, stop=None):
        kept = current_selection(ws, cfg)
        selection.export_accepted(ws, kept)
        return {"accepted": int(kept["kept"].sum()), "generated": len(kept)}
    return {
        "data": lambda ws, cfg, progress=None, stop=None: run_data(ws, cfg, labeled, test, unlabeled,
                                                                   progress, stop),
        "autoencoder": autoencoder.train_autoencoder,
        "pretrain": pretrain.pretrain,
        "latent_classifier": latent_classifier.train_latent_classifier,
        "filter_classifier": filter_classifier.train_filter_classifier,
        "sampling": sampling.generate_dataset,
        "scoring": selection.score_synthetic,
        "selection": select_and_export,
    }


# --- the protocol grid (core.protocol.grid) ----------------------------------------------------

def run_grid(ws: Workspace, cfg: LabConfig, progress=None, stop=None, budgets: dict | None = None) -> pd.DataFrame:
    """The grid's runs not yet done, the summary rewritten after each ("partial" until complete).

    Args:
        ws (`Workspace`): the workspace.
        cfg (`LabConfig`): the config.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.
        budgets (`dict`, *optional*, defaults to `None`): a description per label budget, for the summary.

    Returns:
        `pd.DataFrame`: the finished runs; results/summary.json is rewritten after each run.
    """
    from core.data.tables import load_splits
    _, classes = load_splits(ws)
    planned = len(plan_runs(cfg))
    return grid.run_grid(ws, cfg, progress, stop,
                         after_run=lambda done: write_summary(ws, cfg, done, classes, budgets, planned))


def synthetic_summary(ws: Workspace, cfg: LabConfig) -> dict:
    """The first budget's synthetic set under the config's rule, and `checks`: per budget and
    class, how many images pass each check, beside what the real validation images pass."""
    kept = current_selection(ws, cfg)
    by = kept.groupby(kept["class"].astype(str))
    errors = kept["error"].fillna("").astype(str) if "error" in kept else pd.Series("", index=kept.index)
    return {"generated": len(kept), "accepted": int(kept["kept"].sum()),
            "unreadable": {str(f): e for f, e in zip(kept["file"], errors) if e},
            "rule": to_dict(cfg.selection),
            "per_class": {c: {"generated": len(g), "accepted": int(g["kept"].sum()),
                              "mean_confidence": float(g["confidence"].mean()),
                              "threshold": threshold_of(g)} for c, g in by},
            "checks": {budget_name(v): selection_checks(bws, cfg) for v, bws in budget_views(ws, cfg)
                       if bws.synthetic_scores.exists()}}


def calibration_record(ws: Workspace, cfg: LabConfig) -> dict | None:
    """Per class, the calibrated threshold, its rule and the validation images it read, as
    synthetic/thresholds.csv holds them (None when selection.calibration is "none")."""
    from core.evaluate.selection import load_thresholds
    if cfg.selection.calibration == "none":
        return None
    table = load_thresholds(ws)
    return {"method": cfg.selection.calibration, "quantile": cfg.selection.calibration_quantile,
            "n_val_images": int(table["n_val_images"].sum()),
            "per_class": {str(r["class"]): {"threshold": float(r["threshold"]), "rule": str(r["rule"]),
                                            "n_val_images": int(r["n_val_images"])}
                          for r in table.to_dict("records")}}


def data_sources(labeled=None, test=None, unlabeled=()) -> dict:
    """What the data stage reads (its marker's extra key): the bundled demo, or the user's folders."""
    unlabeled = tuple(str(u) for u in unlabeled or ())
    return {"labeled": str(labeled) if labeled else "demo", "test": str(test) if test else None,
            "unlabeled": unlabeled, "fingerprint": source_fingerprint([p for p in (labeled, test, *unlabeled) if p])}


def _predictions(ws: Workspace):
    def load(run_key: str) -> pd.DataFrame:
        return pd.read_csv(ws.run_predictions(run_key))
    return load


def write_summary(ws: Workspace, cfg: LabConfig, runs: pd.DataFrame, classes: list[str],
                  budgets: dict | None, planned: int, extra: dict | None = None) -> dict:
    """summary.json + summary.md for the runs so far ("partial" until the grid is complete), so a
    killed grid never leaves a summary of another config behind."""
    primary = Workspace(ws.root)
    synthetic = synthetic_summary(primary, cfg) if primary.synthetic_scores.exists() else {}
    summary = summarize(runs, classes, cfg, synthetic, _predictions(ws), budgets, planned)
    summary.update(extra or {})
    atomic_write_json(ws.summary_json, summary)
    atomic_write_text(ws.summary_md, markdown_table(summary))
    return summary


def _steps(ws: Workspace, cfg: LabConfig) -> list[tuple[str, Workspace]]:
    """(stage, the workspace view it runs in): shared stages once, label stages per budget."""
    views = budget_views(ws, cfg)
    return [(stage, ws) for stage in SHARED] + [(stage, bws) for _, bws in views for stage in PER_BUDGET]


def prepare_budgets(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> dict | None:
    """Top up every budget's short classes; describe each budget (labels used, filter classifier
    at chance or not, top-up per class). None when stopped."""
    from core.data.tables import load_splits
    splits, _ = load_splits(ws)
    out = {}
    for value, bws in budget_views(ws, cfg):
        labels, classes = budget_labels(bws, cfg)
        real = labels[labels.split == "train"]
        wants = {}
        for r in cfg.experiment.synthetic_ratios:
            for label, n in class_wants(real, r).items():
                wants[label] = max(wants.get(label, 0), n)
        topped = top_up(bws, cfg, wants, classes, progress, stop)
        if topped.get("stopped"):
            return None
        info = json.loads(Workspace.config_of(bws.filter_classifier_dir).read_text())
        score, n_val = info.get("val_balanced_accuracy"), int((labels.split == "val").sum())
        out[budget_name(value)] = {
            "value": value, "folder": ws.relative(bws.label_root) if bws.scope else ".",
            "labels": ws.relative(bws.labels_file), "per_class": realised(labels, splits, value),
            "filter_val_balanced_accuracy": score, "filter_at_chance": at_chance(score, len(classes), n_val),
            "topup": topped["per_class"], "calibration": calibration_record(bws, cfg)}
    return out


def run_all(ws: Workspace, cfg: LabConfig, labeled=None, test=None, unlabeled=(), progress=None,
            stop=None, notify=None, switch_data: bool = False) -> dict:
    """Every stage (skipped when done for this config), top-up, the grid, then results/summary.json.
    Without `labeled` the workspace's remembered data sources are used (core.protocol.sources);
    other sources in a workspace with models need `switch_data` (the old models are archived).
    `notify(line)` hears what the data stage skipped and why, as soon as it is known.

    Args:
        ws (`Workspace`): the workspace (its root is used).
        cfg (`LabConfig`): the config, saved at the workspace root and beside the results.
        labeled (`str` or `Path`, *optional*, defaults to `None`): the labeled data.
        test (`str` or `Path`, *optional*, defaults to `None`): a separate test set.
        unlabeled (`tuple`, *optional*, defaults to `()`): the unlabeled pool sources.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.
        notify (`Callable[[str], None]`, *optional*, defaults to `None`): hears the data stage's notes.
        switch_data (`bool`, *optional*, defaults to `False`): allow other data sources than the workspace's.

    Returns:
        `dict`: the summary (`summarize`), or {"stopped": True, "stage", ...} when stopped.

    Raises:
        UserError: no `labeled` in a workspace made before it remembered its sources, other sources than
            remembered in a workspace with models and no `switch_data`, or a budget the data cannot meet.
    """
    ws = Workspace(ws.root).ensure()
    labeled, test, unlabeled = choose_sources(ws, labeled, test, unlabeled, switch_data)
    save_config(cfg, ws.root)
    sources = data_sources(labeled, test, unlabeled)
    functions = stage_functions(labeled, test, unlabeled)
    timings, steps = {}, _steps(ws, cfg)
    for i, (stage, sws) in enumerate(steps):
        name = f"{stage}[{sws.scope}]" if sws.scope else stage
        extra = sources if stage == "data" else None
        if stage == "autoencoder":     # a budget the data cannot meet fails now, not after pre-training
            for _, bws in budget_views(ws, cfg):
                budget_labels(bws, cfg)
        if is_done(sws, cfg, stage, extra):
            timings[name] = "skipped"
            continue
        if stop is not None and stop.is_set():
            return {"stopped": True, "stage": name}
        if progress is not None:
            progress({"stage": name, "step": 0, "total": 0, "pipeline_step": i, "pipeline_total": len(steps)})
        t0 = time.perf_counter()
        result = functions[stage](sws, cfg, progress=progress, stop=stop)
        if _stopped(result, stop):
            return {"stopped": True, "stage": name}
        mark_done(sws, cfg, stage, result, time.perf_counter() - t0, extra)
        timings[name] = round(time.perf_counter() - t0, 2)
        if stage == "data" and notify is not None:
            for line in data_report(ws):
                notify(line)
    budgets = prepare_budgets(ws, cfg, progress, stop)
    if budgets is None:
        return {"stopped": True, "stage": "top-up"}
    runs = run_grid(ws, cfg, progress, stop, budgets)
    if stop is not None and stop.is_set():
        return {"stopped": True, "stage": "experiment", "runs_done": len(runs)}
    quality = quality_section(ws, cfg, progress, stop)
    if quality is None:
        return {"stopped": True, "stage": "quality", "runs_done": len(runs)}
    from core.data.tables import load_splits
    _, classes = load_splits(ws)
    summary = write_summary(ws, cfg, runs, classes, budgets, len(plan_runs(cfg)),
                            {"stage_seconds": timings, "quality": quality})
    save_config(cfg, ws.results_dir)
    return summary


def quality_section(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> dict | None:
    """summary.json's `quality`: per budget, the accepted synthetic images the runs drew from,
    measured per class beside the real-vs-real floor (core.evaluate.quality). None when stopped."""
    from core.evaluate.quality import quality_summary
    out = {}
    for value, bws in budget_views(ws, cfg):
        try:
            q = quality_summary(bws, cfg, progress=progress, stop=stop)
        except UserError as e:      # e.g. too few real images of a class to split in halves
            q = {"error": str(e)}
        if q.get("stopped"):
            return None
        out[budget_name(value)] = q
    return out


def data_report(ws: Workspace) -> list[str]:
    """What the data stage skipped and why, as lines for the console (as `data prepare` prints)."""
    labeled = (read_marker(ws, "data").get("result") or {}).get("labeled") or {}
    skipped = labeled.get("skipped")     # the demo builder's is a bool: "the build was up to date"
    lines = [f"skipped {s['path']}: {s['reason']}" for s in skipped if isinstance(s, dict)] \
        if isinstance(skipped, list) else []
    lines += [f"empty class folder (no usable image): {c}" for c in labeled.get("empty_classes") or []]
    lines += [f"followed a symlink out of the labeled folder: {s['path']} -> {s['target']}"
              for s in labeled.get("symlinks_out") or []]
    return lines
