"""One command from data to an honest accuracy table: every stage, skip-by-hash, the protocol grid.

Stage markers (stages/STAGE.json) hold a key hashed from the sub-configs the stage depends on
and the output hashes of the stages it reads; a stage whose key matches and whose outputs still
hash the same is skipped, so a killed run resumes at the first unfinished stage (the trainers
themselves resume from their checkpoints). Grid runs append one row each to results/runs.csv as
they finish; a rerun skips rows whose run key is already there.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.cli import UserError, add_common, guarded, resolve_config, workspace
from core.config import LabConfig, config_hash, identity, save_config, to_dict
from core.io import atomic_write_json, atomic_write_text, folder_hash
from core.metrics import markdown_table, paired_interval, summarize  # noqa: F401  (public here too)
from core.workspace import Workspace

PIPELINE = ("data", "autoencoder", "pretrain", "latent_classifier", "filter_classifier",
            "sampling", "scoring", "selection")
# stage -> (config sections it reads, upstream stages whose outputs it reads)
DEPENDS = {
    "data": (("data",), ()),
    "autoencoder": (("autoencoder", "data"), ("data",)),
    "pretrain": (("pretrain",), ("autoencoder",)),
    "latent_classifier": (("classifier",), ("pretrain", "data")),
    "filter_classifier": (("classify",), ("data",)),
    "sampling": (("sampling",), ("latent_classifier",)),
    "scoring": ((), ("filter_classifier", "sampling")),
    "selection": (("selection",), ("scoring",)),
}


def stage_outputs(ws: Workspace, stage: str) -> list[Path]:
    return {
        "data": [ws.split_manifest, ws.data_dir / "pools.csv"],
        "autoencoder": [ws.autoencoder_dir],
        "pretrain": [ws.unet_dir, ws.scheduler_dir],
        "latent_classifier": [ws.latent_classifier_dir] + (
            [ws.finetuned_unet_dir] if ws.finetuned_unet_dir.exists() else []),
        "filter_classifier": [ws.filter_classifier_dir],
        "sampling": [ws.synthetic_dir / "manifest.csv"],
        "scoring": [ws.synthetic_dir / "scores.csv"],
        "selection": [ws.accepted_dir / "manifest.csv"],
    }[stage]


def output_hash(ws: Workspace, stage: str, cfg: LabConfig | None = None) -> str | None:
    """Content hash of a stage's outputs; None when any is missing. With `cfg`, the synthetic
    tables count only the rows of images this config made (`made_by_config`): images the app adds
    at other guidance scales, and rows a demo bundle leaves out, do not make the stage stale."""
    parts = []
    for p in stage_outputs(ws, stage):
        if p.is_dir():
            if not any(p.iterdir()):
                return None
            parts.append(folder_hash(p, "*.safetensors") + folder_hash(p, "*.json"))
        elif p.is_file():
            # tables hold absolute paths: hash them relative to the workspace, so a workspace
            # moved or installed elsewhere (core.demo_models) keeps its stage markers valid
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
    rows = frame[made_by_config(ws, cfg, frame)]
    return (rows.sort_values("file", kind="stable") if "file" in rows else rows).to_csv(index=False)


def stage_key(ws: Workspace, cfg: LabConfig, stage: str, extra=None) -> str:
    sections, upstream = DEPENDS[stage]
    return config_hash(stage, {s: identity(getattr(cfg, s)) for s in sections},
                       {u: read_marker(ws, u).get("output_hash") for u in upstream}, extra)


def read_marker(ws: Workspace, stage: str) -> dict:
    path = ws.stages_dir / f"{stage}.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}     # a damaged marker means "not done"; the stage reruns


def is_done(ws: Workspace, cfg: LabConfig, stage: str, extra=None) -> bool:
    marker = read_marker(ws, stage)
    return bool(marker) and marker.get("key") == stage_key(ws, cfg, stage, extra) \
        and marker.get("output_hash") == output_hash(ws, stage, cfg)


def mark_done(ws: Workspace, cfg: LabConfig, stage: str, result, seconds: float, extra=None) -> dict:
    sections, upstream = DEPENDS[stage]
    marker = {"stage": stage, "key": stage_key(ws, cfg, stage, extra), "output_hash": output_hash(ws, stage, cfg),
              "config_hash": config_hash(*(getattr(cfg, s) for s in sections)),
              "inputs": {u: read_marker(ws, u).get("output_hash") for u in upstream},
              "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "result": _jsonable(result)}
    atomic_write_json(ws.stages_dir / f"{stage}.json", marker)
    return marker


def _jsonable(result):
    if isinstance(result, pd.DataFrame):
        return {"rows": len(result)}
    if isinstance(result, dict):
        return json.loads(json.dumps(result, default=str))
    return None


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
    from core.data import build_demo, load_splits, prepare_labeled, prepare_pools
    if labeled is None:
        result = {"labeled": build_demo(ws, cfg, progress=progress)}
    else:
        result = {"labeled": prepare_labeled(ws, cfg, labeled, test)}
    if unlabeled:
        result["pools"] = prepare_pools(ws, cfg, list(unlabeled), progress=progress, stop=stop)
    elif labeled is not None:
        # No unlabeled pool given: pre-train on the target's own TRAIN images, labels unused
        # (the paper pre-trains on other data sets; this fallback is named in pools.csv).
        splits, _ = load_splits(ws)
        train = splits[splits.split == "train"]
        atomic_write_text(ws.data_dir / "pools.csv", pd.DataFrame(
            {"path": train["path"], "pool": "target_train_unlabeled", "weight": 1.0}).to_csv(index=False))
        result["pools"] = {"pools": {"target_train_unlabeled": len(train)}}
    return result


def stage_functions(labeled, test, unlabeled):
    from core import autoencoder, classify, latent_classifier, pretrain, sampling, selection

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
        "filter_classifier": classify.train_filter_classifier,
        "sampling": sampling.generate_dataset,
        "scoring": selection.score_synthetic,
        "selection": select_and_export,
    }


def current_selection(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """Stored scores with the config's rule applied, restricted to the images this config made:
    the manifest also keeps images from other guidance scales / models (the UI adds to it), and
    mixing those in would make the experiment measure something its config does not say."""
    from core.selection import select
    kept = select(ws, cfg)
    return kept[made_by_config(ws, cfg, kept)]


def made_by_config(ws: Workspace, cfg: LabConfig, frame: pd.DataFrame) -> pd.Series:
    """Which rows of a synthetic manifest / scores table are images that `cfg`'s sampling stage
    made: its guidance scale, steps, scheduler, eta, the workspace's current models, its seeds."""
    from core.sampling import SEED_STRIDE, unet_dir
    s = cfg.sampling
    wanted = {"guidance_scale": s.guidance_scale, "steps": s.steps, "scheduler": s.scheduler, "eta": s.eta,
              "unet_hash": folder_hash(unet_dir(ws, cfg)), "vae_hash": folder_hash(ws.autoencoder_dir),
              "classifier_hash": folder_hash(ws.latent_classifier_dir)}
    mask = pd.Series(True, index=frame.index)
    if s.class_guidance_scales and "class" in frame:   # per-class scales (tune-guidance) win
        wanted.pop("guidance_scale")
        scale = frame["class"].astype(str).map(s.class_scales()).fillna(s.guidance_scale)
        mask &= (pd.to_numeric(frame["guidance_scale"], errors="coerce") - scale).abs() < 1e-9
    for col, value in wanted.items():
        if col in frame:
            mask &= (pd.to_numeric(frame[col], errors="coerce") - value).abs() < 1e-9 if isinstance(value, float) \
                else frame[col].astype(str) == str(value)
    if {"seed", "label"} <= set(frame.columns):
        k = pd.to_numeric(frame["seed"], errors="coerce") - pd.to_numeric(frame["label"], errors="coerce") \
            * SEED_STRIDE - s.seed
        mask &= (k >= 0) & (k < s.num_per_class)
    return mask


# --- the protocol grid ------------------------------------------------------------------------

def grid(cfg: LabConfig) -> list[dict]:
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
    """Each grid run's key in results/runs.csv: the run, the configs it reads, its inputs' hashes."""
    base = {"classify": identity(cfg.classify), "selection": identity(cfg.selection),
            "sampling": identity(cfg.sampling),           # which synthetic images the runs drew from
            "data": read_marker(ws, "data").get("output_hash"),
            "scores": read_marker(ws, "scoring").get("output_hash")}
    return [config_hash(base, r) for r in plan]


def draw_synthetic(accepted: pd.DataFrame, real: pd.DataFrame, ratio: float, seed: int) -> pd.DataFrame:
    """round(ratio * n_real) accepted images, split over classes in the real subset's proportions
    (so the class prior stays the real one), capped by what each class has; seeded."""
    want = int(round(ratio * len(real)))
    counts = real["label"].value_counts()
    parts = []
    for label, n in counts.items():
        pool = accepted[accepted["label"] == label]
        k = min(len(pool), int(round(want * n / len(real))))
        if k:
            parts.append(pool.sample(n=k, random_state=np.random.default_rng([seed, int(label)])))
    cols = ["path", "label"]
    return pd.concat(parts)[cols] if parts else pd.DataFrame(columns=cols)


def run_grid(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> pd.DataFrame:
    from core.classify import evaluate, train_classifier
    from core.data import load_splits
    from core.selection import synthetic_path
    from core.splits import stratified_take
    splits, classes = load_splits(ws)
    train, val, test = (splits[splits.split == s] for s in ("train", "val", "test"))
    if test.empty:
        raise UserError(f"{ws.split_manifest}: the test split is empty (pass --test PATH)")
    kept = current_selection(ws, cfg)
    accepted = kept[kept["kept"]].assign(path=lambda d: [str(synthetic_path(ws, f)) for f in d["file"]])
    plan = grid(cfg)
    keys = run_keys(ws, cfg, plan)
    runs_csv, archive_csv = ws.results_dir / "runs.csv", ws.results_dir / "runs_other_configs.csv"
    # rows of other configs move to the archive (kept, not mixed in) and come back if that config does
    known = pd.concat([_read_runs(runs_csv), _read_runs(archive_csv)], ignore_index=True)
    known = known.drop_duplicates("run_key", keep="first")
    done = known[known["run_key"].isin(keys)]
    done = done.set_index("run_key").loc[[k for k in keys if k in set(done["run_key"])]].reset_index()
    atomic_write_text(archive_csv, known[~known["run_key"].isin(keys)].to_csv(index=False))
    atomic_write_text(runs_csv, done.to_csv(index=False))
    for i, (run, key) in enumerate(zip(plan, keys)):
        if key in set(done["run_key"]):
            continue
        if stop is not None and stop.is_set():
            break
        real = train.loc[stratified_take(train, run["label_fraction"], run["seed"])]
        extra = draw_synthetic(accepted, real, run["synthetic_ratio"], run["seed"]) \
            if run["arm"] == "augmented" else None
        t0 = time.perf_counter()

        def report(p, i=i):
            if progress is not None:
                progress({**p, "stage": "experiment", "run": i + 1, "runs": len(plan), **run})
        model, history = train_classifier(real, val, classes, cfg.classify, run["seed"], extra_df=extra,
                                          progress=report, stop=stop, stage="experiment")
        if history.attrs["stopped"]:
            break
        m = evaluate(model, test, classes, cfg.classify)
        row = {"run_key": key, **run, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
               "macro_f1": m["macro_f1"],
               **{f"recall_{c}": v for c, v in m["per_class_recall"].items()},
               "n_real": len(real), "n_synthetic": 0 if extra is None else len(extra),
               "n_synthetic_wanted": int(round(run["synthetic_ratio"] * len(real))),
               "n_test": m["n"], "best_epoch": history.attrs["best_epoch"],
               "val_balanced_accuracy": float(history["val_balanced_accuracy"].max()),
               "skipped_files": len(history.attrs["skipped"]) + len(m["skipped"]),
               "confusion_matrix": json.dumps(m["confusion_matrix"]),
               "seconds": round(time.perf_counter() - t0, 2)}
        done = pd.DataFrame([row]) if done.empty else pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        atomic_write_text(runs_csv, done.to_csv(index=False))
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
                              "mean_confidence": float(g["confidence"].mean())} for c, g in by}}


def data_sources(labeled=None, test=None, unlabeled=()) -> dict:
    """What the data stage reads (its marker's extra key): the bundled demo, or the user's folders."""
    unlabeled = tuple(str(u) for u in unlabeled or ())
    return {"labeled": str(labeled) if labeled else "demo", "test": str(test) if test else None,
            "unlabeled": unlabeled, "fingerprint": source_fingerprint([p for p in (labeled, test, *unlabeled) if p])}


def run_all(ws: Workspace, cfg: LabConfig, labeled=None, test=None, unlabeled=(), progress=None,
            stop=None) -> dict:
    """Every stage (skipped when done for this config), the grid, then results/summary.json."""
    ws.ensure()
    save_config(cfg, ws.root)
    unlabeled = tuple(str(u) for u in unlabeled or ())
    sources = data_sources(labeled, test, unlabeled)
    functions = stage_functions(labeled, test, unlabeled)
    timings = {}
    for i, stage in enumerate(PIPELINE):
        extra = sources if stage == "data" else None
        if is_done(ws, cfg, stage, extra):
            timings[stage] = "skipped"
            continue
        if stop is not None and stop.is_set():
            return {"stopped": True, "stage": stage}
        if progress is not None:
            progress({"stage": stage, "step": 0, "total": 0, "pipeline_step": i, "pipeline_total": len(PIPELINE)})
        t0 = time.perf_counter()
        result = functions[stage](ws, cfg, progress=progress, stop=stop)
        if _stopped(result, stop):
            return {"stopped": True, "stage": stage}
        mark_done(ws, cfg, stage, result, time.perf_counter() - t0, extra)
        timings[stage] = round(time.perf_counter() - t0, 2)
    runs = run_grid(ws, cfg, progress, stop)
    if stop is not None and stop.is_set():
        return {"stopped": True, "stage": "experiment", "runs_done": len(runs)}
    from core.data import load_splits
    _, classes = load_splits(ws)
    summary = summarize(runs, classes, cfg, synthetic_summary(ws, cfg))
    summary["stage_seconds"] = timings
    atomic_write_json(ws.results_dir / "summary.json", summary)
    atomic_write_text(ws.results_dir / "summary.md", markdown_table(summary))
    save_config(cfg, ws.results_dir)
    return summary


class ConsoleProgress:
    """Prints a stage change at once and otherwise at most one line every `every` seconds."""

    def __init__(self, every: float = 5.0):
        self.every, self.last, self.stage = every, 0.0, None

    def __call__(self, p: dict) -> None:
        now = time.monotonic()
        if p.get("stage") != self.stage or now - self.last >= self.every:
            self.stage, self.last = p.get("stage"), now
            extra = {k: p[k] for k in ("run", "runs", "arm", "seed", "loss") if k in p}
            print(f"[{p.get('stage')}] {p.get('step', '')}/{p.get('total', '')} {extra or ''}", flush=True)


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core run",
                                     description="data -> models -> synthetic set -> baseline vs augmented")
    add_common(parser)
    parser.add_argument("--labeled", type=Path, default=None,
                        help="labeled ImageFolder or PathMNIST .npz (default: the bundled demo)")
    parser.add_argument("--test", type=Path, default=None, help="separate test ImageFolder")
    parser.add_argument("--unlabeled", type=Path, nargs="+", default=[], help="unlabeled folders / slides")
    args = parser.parse_args(argv)
    if args.test is not None and args.labeled is None:
        raise UserError("--test needs --labeled (the demo brings its own test split)")
    cfg, ws = resolve_config(args), workspace(args)
    out = run_all(ws, cfg, args.labeled, args.test, args.unlabeled, progress=ConsoleProgress())
    if out.get("stopped"):
        print(f"stopped during {out['stage']}; rerun the same command to resume", file=sys.stderr)
        return 130
    print(markdown_table(out))
    print(f"synthetic: {out['synthetic']['accepted']} accepted of {out['synthetic']['generated']}")
    print(f"results in {ws.results_dir}")
    return 0
