"""Tab 4 — augmentation vs baseline: one-click augmented run (progress, stop) and its results:
mean ± std per label fraction × synthetic ratio, per-class recall, confusion matrices, the
runs table (downloadable CSV)."""
from __future__ import annotations

import json
import re

import gradio as gr
import numpy as np
import pandas as pd

from app import charts
from app.context import COMPUTE, AppContext, job_markdown, progress_html, stop_job
from core.cli import UserError
from core.jobs import JobBusy

JOB = "experiment"
_RECALL_COLUMN = re.compile(r"^(?:per_class_)?recall[_/:](.+)$")


def runs_file(ctx: AppContext):
    return ctx.workspace.results_dir / "runs.csv"


def load_runs(ctx: AppContext) -> pd.DataFrame:
    path = runs_file(ctx)
    if not path.exists():
        return pd.DataFrame()
    runs = pd.read_csv(path)
    if "arm" not in runs.columns:
        ratio = runs.get("synthetic_ratio", pd.Series(0.0, index=runs.index)).fillna(0)
        runs["arm"] = np.where(ratio > 0, "augmented", "baseline")
    return runs


def setting_of(runs: pd.DataFrame) -> pd.Series:
    """Label 'labels 5% · synth ×1' for each row (the baseline has no synthetic ratio)."""
    frac = runs.get("label_fraction", pd.Series(1.0, index=runs.index)).astype(float)
    ratio = runs.get("synthetic_ratio", pd.Series(0.0, index=runs.index)).fillna(0).astype(float)
    label = [f"labels {f:.0%}" + (f" · synth ×{r:g}" if r > 0 else "") for f, r in zip(frac, ratio)]
    return pd.Series(label, index=runs.index)


def accuracy_summary(runs: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean ± std over seeds per (label fraction, synthetic ratio, arm)."""
    if runs.empty or metric not in runs.columns:
        return pd.DataFrame(columns=["setting", "arm", "mean", "std", "n", "mean ± std"])
    keys = [k for k in ("label_fraction", "synthetic_ratio", "arm") if k in runs.columns]
    table = runs.assign(setting=setting_of(runs)).groupby(keys + ["setting"], sort=True, dropna=False)
    table = table[metric].agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    table["mean ± std"] = [f"{m:.3f} ± {0 if np.isnan(s) else s:.3f}" for m, s in zip(table["mean"], table["std"])]
    # the baseline of a label fraction is drawn next to each of its augmented settings
    return table.sort_values(["setting", "arm"], kind="stable").reset_index(drop=True)


def recall_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean per-class recall per arm, from `recall_CLASS` columns or a `per_class_recall` JSON column."""
    rows = []
    for _, run in runs.iterrows():
        per_class = {}
        for col, value in run.items():
            match = _RECALL_COLUMN.match(str(col))
            if match and pd.notna(value):
                per_class[match.group(1)] = float(value)
        if not per_class and isinstance(run.get("per_class_recall"), str):
            per_class = {k: v for k, v in json.loads(run["per_class_recall"]).items() if v is not None}
        rows += [{"arm": run["arm"], "class": c, "recall": r} for c, r in per_class.items()]
    if not rows:
        return pd.DataFrame(columns=["arm", "class", "recall"])
    return pd.DataFrame(rows).groupby(["arm", "class"], sort=False)["recall"].mean().reset_index()


def confusion_by_arm(ctx: AppContext, runs: pd.DataFrame) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Summed confusion matrix per arm from a `confusion_matrix` JSON column (or summary.json)."""
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    classes = _classes(ctx, runs)
    if "confusion_matrix" in runs.columns:
        for arm, part in runs.groupby("arm", sort=False):
            mats = [np.asarray(json.loads(m)) for m in part["confusion_matrix"] if isinstance(m, str)]
            if mats:
                out[str(arm)] = (np.sum(mats, axis=0), classes)
    if not out:
        summary = load_summary(ctx)
        for arm, cm in (summary.get("confusion_matrices") or {}).items():
            out[str(arm)] = (np.asarray(cm), summary.get("classes") or classes)
    return out


def load_summary(ctx: AppContext) -> dict:
    path = ctx.workspace.results_dir / "summary.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def _classes(ctx: AppContext, runs: pd.DataFrame) -> list[str]:
    if "classes" in runs.columns and isinstance(runs["classes"].iloc[0], str):
        return list(json.loads(runs["classes"].iloc[0]))
    from core.data import load_splits
    try:
        return list(load_splits(ctx.workspace)[1])
    except UserError:
        return []


def hint(ctx: AppContext) -> str:
    return (f"No results in {ctx.workspace.results_dir} yet. Press **Run augmented experiment** "
            f"(or run `python -m core run --workspace {ctx.workspace.root}`).")


def start_experiment(ctx: AppContext, seeds: int | None = None) -> str:
    """One click: baseline and augmented arms through core.experiment.run_all in the shared slot."""
    from core.experiment import run_all
    cfg = ctx.config
    if seeds:
        cfg = ctx.with_overrides("experiment", {"seeds": tuple(range(int(seeds)))})
    try:
        ctx.runner.start(JOB, run_all, ws=ctx.workspace, cfg=cfg)
    except JobBusy as e:
        raise UserError(str(e)) from e
    return "experiment started (finished stages are skipped; a stopped run resumes)"


def refresh(ctx: AppContext):
    """(status, bar, summary md, accuracy plot, recall plot, confusion plots, table, csv file)."""
    status = ctx.runner.status()
    runs = load_runs(ctx)
    if runs.empty:
        empty = charts.accuracy_bars(pd.DataFrame())
        return (job_markdown(status), progress_html(status if status.get("name") == JOB else {}),
                hint(ctx), empty, charts.recall_bars(pd.DataFrame()), empty, empty, None, None)
    summary = accuracy_summary(runs)
    mats = confusion_by_arm(ctx, runs)
    figs = [charts.confusion_heatmap(m, c, f"confusion — {arm}") for arm, (m, c) in list(mats.items())[:2]]
    while len(figs) < 2:
        figs.append(charts.confusion_heatmap(np.zeros((0, 0)), [], "confusion"))
    # core writes the table with both intervals, realised ratios and status notes: shown as written
    written = ctx.workspace.results_dir / "summary.md"
    headline = written.read_text(encoding="utf-8") if written.exists() else _headline(summary)
    return (job_markdown(status), progress_html(status if status.get("name") == JOB else {}),
            headline, charts.accuracy_bars(summary), charts.recall_bars(recall_table(runs)),
            figs[0], figs[1], summary.drop(columns=["mean", "std"]), str(runs_file(ctx)))


def _headline(summary: pd.DataFrame) -> str:
    lines = ["| setting | arm | accuracy (mean ± std) | seeds |", "|---|---|---|---|"]
    lines += [f"| {s} | {a} | {ms} | {n} |" for s, a, ms, n in
              zip(summary["setting"], summary["arm"], summary["mean ± std"], summary["n"])]
    return "\n".join(lines)


def build(ctx: AppContext) -> dict:
    with gr.Row():
        run_btn = gr.Button("Run augmented experiment", variant="primary", elem_id="run-experiment")
        stop_btn = gr.Button("Stop", variant="stop")
        seeds = gr.Number(len(ctx.config.experiment.seeds), label="seeds", precision=0, minimum=1)
    note = gr.Markdown()
    status_md = gr.Markdown(elem_id="results-status")
    bar = gr.HTML()
    headline = gr.Markdown(elem_id="results-summary")
    with gr.Row():
        acc_plot = gr.Plot(label="accuracy")
        recall_plot = gr.Plot(label="per-class recall")
    with gr.Row():
        cm_a = gr.Plot(label="confusion matrix")
        cm_b = gr.Plot(label="confusion matrix")
    table = gr.Dataframe(label="mean ± std per setting", interactive=False)
    csv = gr.File(label="runs.csv (one row per run)", interactive=False)
    outputs = [status_md, bar, headline, acc_plot, recall_plot, cm_a, cm_b, table, csv]

    def on_run(seeds):
        try:
            return start_experiment(ctx, seeds)
        except UserError as e:
            raise gr.Error(str(e)) from e

    run_btn.click(on_run, seeds, note, concurrency_id=COMPUTE, concurrency_limit=1, api_name="experiment_start")
    stop_btn.click(lambda: stop_job(ctx, (JOB,)), None, note, queue=False, api_name="experiment_stop")
    timer = gr.Timer(3.0)
    # only the status line and bar tick often; the figures are rebuilt when runs.csv changes
    state = {"mtime": None}

    def tick():
        path = runs_file(ctx)
        mtime = path.stat().st_mtime_ns if path.exists() else None
        if mtime == state["mtime"]:
            status = ctx.runner.status()
            return (job_markdown(status), progress_html(status if status.get("name") == JOB else {}),
                    *[gr.skip()] * (len(outputs) - 2))
        state["mtime"] = mtime
        return refresh(ctx)

    timer.tick(tick, None, outputs, show_progress="hidden", queue=False, api_visibility="private")
    return {"refresh": (lambda: refresh(ctx), outputs)}
