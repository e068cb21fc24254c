"""One command from data to an honest accuracy table: every stage, skip-by-hash, the protocol grid.

Shared stages (data, autoencoder, pretrain) run once; the label-trained ones (latent classifier,
filter classifier, sampling, scoring, selection) once per label budget, each on exactly the
budget's labeled subset (core.data.budget), skipped when their marker says done (core.protocol.stages). Then
each budget's short classes are topped up (core.protocol.topup) and the grid runs: a baseline and an
augmented run per seed and ratio, on the budget's labels, for the same optimizer steps. Each run
appends one row to results/runs.csv and writes results/runs/KEY/ (labels.csv, synthetic.csv,
predictions.csv); a rerun skips rows whose run key is already there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from core.data.budget import budget_labels, budget_name, budget_views, realised, write_labels
from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import config_hash, identity, save_config, to_dict
from core.io import atomic_write_json, atomic_write_text
from core.evaluate.metrics import at_chance
from core.evaluate.selection import current_selection
from core.protocol.sources import choose_sources
from core.protocol.stages import PER_BUDGET, SHARED, is_done, mark_done, read_marker
from core.evaluate.summary import markdown_table, summarize
from core.protocol.topup import accepted_images, class_wants, draw_synthetic, threshold_of, top_up
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
    from core.data.tables import load_pools, load_splits
    from core.data.labeled import prepare_labeled
    from core.data.pools import prepare_pools
    if labeled is None:
        return {"labeled": build_demo(ws, cfg, progress=progress)}
    result = {"labeled": prepare_labeled(ws, cfg, labeled, test)}
    if unlabeled:
        result["pools"] = prepare_pools(ws, cfg, list(unlabeled), progress=progress, stop=stop)
    if cfg.data.pool_labeled_images:
        # every non-test labeled image, label dropped: what a budget does not label is the
        # unlabeled data the method exists to exploit (pre-training reads no label)
        splits, _ = load_splits(ws)
        pool = splits[splits.split.isin(("train", "val"))]
        rows = pd.DataFrame({"path": pool["path"], "pool": "labeled_images_unlabeled", "weight": 1.0})
        if unlabeled:
            rows = pd.concat([load_pools(ws), rows], ignore_index=True)
        atomic_write_text(ws.pools_file, rows.assign(path=ws.stored_paths(rows["path"])).to_csv(index=False))
        result.setdefault("pools", {}).setdefault("pools", {})["labeled_images_unlabeled"] = len(pool)
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


# --- the protocol grid ------------------------------------------------------------------------

def plan_runs(cfg: LabConfig) -> list[dict]:
    """Every run: a baseline per (fraction, seed) and an augmented run per (fraction, ratio, seed)."""
    e = cfg.experiment
    runs = []
    for f in e.label_fractions:
        for seed in e.seeds:
            runs.append({"arm": "baseline", "label_fraction": f, "synthetic_ratio": 0.0, "seed": seed})
            runs += [{"arm": "augmented", "label_fraction": f, "synthetic_ratio": r, "seed": seed}
                     for r in e.synthetic_ratios]
    return runs


def run_keys(ws: Workspace, cfg: LabConfig, plan: list[dict]) -> list[str]:
    """Each grid run's key in results/runs.csv: the run, the configs it reads, its inputs' hashes
    (the data, and the scores of its budget's synthetic images)."""
    views = dict(budget_views(ws, cfg))
    base = {"classify": identity(cfg.downstream), "selection": identity(cfg.selection),
            "sampling": identity(cfg.sampling),           # which synthetic images the runs drew from
            "topup_rounds": cfg.experiment.topup_rounds, "subset_seed": cfg.data.seed,
            "data": read_marker(ws, "data").get("output_hash")}
    return [config_hash(base, r, read_marker(views[r["label_fraction"]], "scoring").get("output_hash"))
            for r in plan]


INT_COLUMNS = ("seed", "n_real", "n_val", "n_synthetic", "n_synthetic_wanted", "n_test", "steps",
               "batch_size", "best_step", "skipped_files")


def _write_runs(path: Path, runs: pd.DataFrame) -> None:
    # a resumed table must not turn counts into floats (NaN-free int columns stay int)
    runs = runs.copy()
    for col in INT_COLUMNS:
        if col in runs and runs[col].notna().all():
            runs[col] = runs[col].astype("int64")
    atomic_write_text(path, runs.to_csv(index=False))


def _run_once(ws: Workspace, bws: Workspace, cfg: LabConfig, run: dict, key: str, labels: pd.DataFrame,
              accepted: pd.DataFrame, test: pd.DataFrame, classes: list[str], report, stop):
    """Train and test one run; write its folder; its runs.csv row, or None when stopped."""
    from core.train.image_classifier import test_metrics, train_image_classifier
    real, val = labels[labels.split == "train"], labels[labels.split == "val"]
    extra, per_class = draw_synthetic(accepted, real, run["synthetic_ratio"], run["seed"]) \
        if run["arm"] == "augmented" else (None, {})
    t0 = time.perf_counter()
    model, history = train_image_classifier(real, val, classes, cfg.downstream, run["seed"], extra_df=extra,
                                      progress=report, stop=stop, stage="downstream")
    if history.attrs["stopped"]:
        return None
    m = test_metrics(model, test, classes, cfg.downstream)
    run_dir = ws.run_dir(key)
    write_labels(run_dir, labels, ws)
    if extra is not None:
        named = extra.assign(class_name=[classes[k] for k in extra["label"]], path=ws.stored_paths(extra["path"]))
        atomic_write_text(ws.run_synthetic(key), named.to_csv(index=False))
    predictions = m["predictions"]
    if "path" in predictions:
        predictions = predictions.assign(path=ws.stored_paths(predictions["path"]))
    atomic_write_text(ws.run_predictions(key), predictions.to_csv(index=False))
    val_score = history.attrs["best_val_balanced_accuracy"]
    return {"run_key": key, **run, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"], **{f"recall_{c}": v for c, v in m["per_class_recall"].items()},
            "n_real": len(real), "n_val": len(val), "n_synthetic": 0 if extra is None else len(extra),
            "n_synthetic_wanted": sum(v["wanted"] for v in per_class.values()),
            "synthetic_per_class": json.dumps({classes[k]: v for k, v in per_class.items()}),
            "n_test": m["n"], "steps": history.attrs["steps"], "batch_size": history.attrs["batch_size"],
            "compute": cfg.downstream.compute, "best_step": history.attrs["best_step"],
            "val_balanced_accuracy": val_score,
            "at_chance": at_chance(val_score, len(classes), len(val)),
            "labels": ws.relative(Workspace.labels_of(run_dir)),
            "latent_classifier": ws.relative(bws.latent_classifier_dir),
            "filter_classifier": ws.relative(bws.filter_classifier_dir),
            "skipped_files": len(history.attrs["skipped"]) + len(m["skipped"]),
            "confusion_matrix": json.dumps(m["confusion_matrix"]),
            "seconds": round(time.perf_counter() - t0, 2)}


def run_grid(ws: Workspace, cfg: LabConfig, progress=None, stop=None, budgets: dict | None = None) -> pd.DataFrame:
    from core.data.tables import load_splits
    splits, classes = load_splits(ws)
    test = splits[splits.split == "test"]
    if test.empty:
        raise UserError(f"{ws.split_manifest}: the test split is empty (pass --test PATH)")
    plan = plan_runs(cfg)
    keys = run_keys(ws, cfg, plan)
    runs_csv, archive_csv = ws.runs_csv, ws.runs_archive_csv
    # rows of other configs move to the archive (kept, not mixed in) and come back if that config does
    known = pd.concat([_read_runs(runs_csv), _read_runs(archive_csv)], ignore_index=True)
    known = known.drop_duplicates("run_key", keep="first")
    done = known[known["run_key"].isin(keys)]
    done = done.set_index("run_key").loc[[k for k in keys if k in set(done["run_key"])]].reset_index()
    _write_runs(archive_csv, known[~known["run_key"].isin(keys)])
    _write_runs(runs_csv, done)
    views, inputs = dict(budget_views(ws, cfg)), {}
    for i, (run, key) in enumerate(zip(plan, keys)):
        if key in set(done["run_key"]):
            continue
        if stop is not None and stop.is_set():
            break
        bws = views[run["label_fraction"]]
        if bws not in inputs:
            inputs[bws] = (budget_labels(bws, cfg)[0], accepted_images(bws, cfg))

        def report(p, i=i):
            if progress is not None:
                progress({**p, "stage": "experiment", "run": i + 1, "runs": len(plan), **run})
        row = _run_once(ws, bws, cfg, run, key, *inputs[bws], test, classes, report, stop)
        if row is None:
            break
        done = pd.DataFrame([row]) if done.empty else pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        _write_runs(runs_csv, done)
        write_summary(ws, cfg, done, classes, budgets, planned=len(plan))
    return done


def _read_runs(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["run_key"])
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=["run_key"])     # a damaged table: its runs are redone


def synthetic_summary(ws: Workspace, cfg: LabConfig) -> dict:
    kept = current_selection(ws, cfg)
    by = kept.groupby(kept["class"].astype(str))
    errors = kept["error"].fillna("").astype(str) if "error" in kept else pd.Series("", index=kept.index)
    return {"generated": len(kept), "accepted": int(kept["kept"].sum()),
            "unreadable": {str(f): e for f, e in zip(kept["file"], errors) if e},
            "rule": to_dict(cfg.selection),
            "per_class": {c: {"generated": len(g), "accepted": int(g["kept"].sum()),
                              "mean_confidence": float(g["confidence"].mean()),
                              "threshold": threshold_of(g)} for c, g in by}}


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
    `notify(line)` hears what the data stage skipped and why, as soon as it is known."""
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
