"""Tab 4 — augmentation vs baseline: one-click augmented run (progress, stop) and its results as
core writes them (core.protocol.experiment.write_summary): results/summary.md as the headline, the cells of
results/summary.json as the accuracy-vs-label-budget curve (with the paired difference and both
its intervals beside it), the accuracy chart, per-class recall and table, and results/runs.csv
(downloadable) for the confusion matrices of the main cell's runs. Nothing is recomputed here, so
the tab cannot disagree with the files."""
from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pandas as pd

from app import charts
from app.context import COMPUTE, AppContext, job_markdown, progress_html, stop_job
from core.errors import UserError
from core.protocol.jobs import JobBusy

JOB = "experiment"
TABLE_COLUMNS = ["label_fraction", "synthetic_ratio", "arm", "setting", "mean", "std", "n", "mean ± std"]


def runs_file(ctx: AppContext):
    return ctx.workspace.runs_csv


def load_runs(ctx: AppContext) -> pd.DataFrame:
    path = runs_file(ctx)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def load_summary(ctx: AppContext) -> dict:
    path = ctx.workspace.summary_json
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def setting_of(label_fraction: float, synthetic_ratio: float) -> str:
    """'labels 5% · synth ×1' (a count budget: 'labels 20/class'; the baseline has no ratio)."""
    f = float(label_fraction)
    text = f"labels {f:.0%}" if f <= 1 else f"labels {int(f)}/class"
    return text + (f" · synth ×{synthetic_ratio:g}" if synthetic_ratio > 0 else "")


def accuracy_table(summary: dict, metric: str = "accuracy") -> pd.DataFrame:
    """summary.json's mean ± std over seeds per (label budget, synthetic ratio, arm), one row each;
    a budget's baseline, repeated in every cell of that budget, once."""
    rows = []
    for cell in summary.get("grid") or []:
        for arm in ("baseline", "augmented"):
            stats = (cell.get(arm) or {}).get(metric) or {}
            if stats.get("mean") is None:
                continue
            ratio = cell["synthetic_ratio"] if arm == "augmented" else 0.0
            rows.append({"label_fraction": cell["label_fraction"], "synthetic_ratio": ratio, "arm": arm,
                         "setting": setting_of(cell["label_fraction"], ratio), "mean": stats["mean"],
                         "std": stats["std"], "n": len(stats.get("runs") or []),
                         "mean ± std": f"{stats['mean']:.3f} ± {stats['std']:.3f}"})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).drop_duplicates(["label_fraction", "synthetic_ratio", "arm"])
    return table.sort_values(["setting", "arm"], kind="stable").reset_index(drop=True)


CURVE_COLUMNS = ["x", "budget", "label_fraction", "synthetic_ratio", "arm", "line", "mean", "std", "n",
                 "status", "realised_ratio", "shortfall", "delta", "delta_low", "delta_high", "delta_n",
                 "boot_low", "boot_high", "n_test"]


def budget_axis(summary: dict) -> tuple[str, str]:
    """(the x of the accuracy curve, its axis title): the label fraction when every budget is one,
    images per class when every budget is a count, else summary.json's labeled training images."""
    values = [float(c["label_fraction"]) for c in summary.get("grid") or []]
    if all(v <= 1 for v in values):
        return "label_fraction", "label budget (fraction of the labeled pool, log scale)"
    if all(v > 1 for v in values):
        return "label_fraction", "label budget (labeled images per class, log scale)"
    return "n_real", "labeled training images (summary.json n_real, log scale)"


def curve_table(summary: dict, metric: str = "accuracy") -> pd.DataFrame:
    """One row per (budget, line) from summary.json's cells, as written: each arm's mean ± std
    over seeds, and for the augmented lines the paired difference with its interval over seeds
    (`delta`) and over test images (`bootstrap`). Nothing is recomputed."""
    x_key, _ = budget_axis(summary)
    rows = []
    for cell in summary.get("grid") or []:
        f, r = cell["label_fraction"], cell["synthetic_ratio"]
        delta, boot = (cell.get("delta") or {}).get(metric) or {}, (cell.get("bootstrap") or {})
        for arm in ("baseline", "augmented"):
            stats = (cell.get(arm) or {}).get(metric) or {}
            if stats.get("mean") is None or cell.get(x_key) is None:
                continue
            aug = arm == "augmented"
            rows.append({"x": float(cell[x_key]), "budget": setting_of(f, 0.0), "label_fraction": f,
                         "synthetic_ratio": r if aug else 0.0, "arm": arm,
                         "line": f"augmented (synthetic ×{r:g} asked)" if aug else "baseline (real only)",
                         "mean": stats["mean"], "std": stats.get("std"), "n": len(stats.get("runs") or []),
                         "status": cell.get("status", "ok"),
                         "realised_ratio": cell.get("realised_ratio") if aug else None,
                         "shortfall": cell.get("shortfall") if aug else None,
                         "delta": delta.get("mean") if aug else None, "delta_low": delta.get("low") if aug else None,
                         "delta_high": delta.get("high") if aug else None, "delta_n": delta.get("n") if aug else None,
                         "boot_low": (boot.get(metric) or {}).get("low") if aug else None,
                         "boot_high": (boot.get(metric) or {}).get("high") if aug else None,
                         "n_test": boot.get("n_test") if aug else None})
    table = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    # a budget's baseline sits in every cell of that budget: once
    table = table.drop_duplicates(["label_fraction", "line"])
    return table.sort_values(["synthetic_ratio", "x"], kind="stable").reset_index(drop=True)   # baseline first


def main_cell(summary: dict) -> dict:
    """The grid cell summary.json calls main (the first budget at ratio 1, else the first ratio)."""
    want = summary.get("main_cell") or {}
    return next((c for c in summary.get("grid") or []
                 if c["label_fraction"] == want.get("label_fraction")
                 and c["synthetic_ratio"] == want.get("synthetic_ratio")), {})


def recall_table(summary: dict) -> pd.DataFrame:
    """The main cell's mean per-class recall per arm, as summary.json holds it."""
    rows = [{"arm": arm, "class": name, "recall": value}
            for arm, per_class in (main_cell(summary).get("per_class_recall") or {}).items()
            for name, value in per_class.items() if value is not None]
    return pd.DataFrame(rows, columns=["arm", "class", "recall"])


def confusion_by_arm(runs: pd.DataFrame, summary: dict) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per arm, the confusion matrices runs.csv holds for the main cell's runs, summed over seeds
    (summary.json keeps no matrices); classes in summary.json's order."""
    cell, out = main_cell(summary), {}
    if runs.empty or not cell or "confusion_matrix" not in runs:
        return out
    in_cell = runs["label_fraction"] == cell["label_fraction"]
    for arm, ratio in (("baseline", 0.0), ("augmented", cell["synthetic_ratio"])):
        part = runs[in_cell & (runs["arm"] == arm) & np.isclose(runs["synthetic_ratio"].fillna(0), ratio)]
        mats = [np.asarray(json.loads(m)) for m in part["confusion_matrix"] if isinstance(m, str)]
        if mats:
            out[arm] = (np.sum(mats, axis=0), list(summary.get("classes") or []))
    return out


def hint(ctx: AppContext) -> str:
    return (f"No results in {ctx.workspace.results_dir} yet. Press **Run augmented experiment** "
            f"(or run `python -m core run --workspace {ctx.workspace.root}`).")


def start_experiment(ctx: AppContext, seeds: int | None = None) -> str:
    """One click: baseline and augmented arms through core.protocol.experiment.run_all in the shared slot."""
    from core.protocol.experiment import run_all
    cfg = ctx.config
    if seeds:
        cfg = ctx.with_overrides("experiment", {"seeds": tuple(range(int(seeds)))})
    try:
        ctx.runner.start(JOB, run_all, ws=ctx.workspace, cfg=cfg)
    except JobBusy as e:
        raise UserError(str(e)) from e
    return "experiment started (finished stages are skipped; a stopped run resumes)"


def refresh(ctx: AppContext):
    """(status, bar, summary md, accuracy-vs-budget curve, accuracy bars, recall plot, confusion
    plots, table, csv file)."""
    status = ctx.runner.status()
    job = (job_markdown(status), progress_html(status if status.get("name") == JOB else {}))
    summary = load_summary(ctx)
    if not summary.get("grid"):
        empty = charts.accuracy_bars(pd.DataFrame())
        return (*job, hint(ctx), charts.accuracy_curve(pd.DataFrame(), ""), empty,
                charts.recall_bars(pd.DataFrame()), empty, empty, None, None)
    table = accuracy_table(summary)
    cell = main_cell(summary)
    where = setting_of(cell["label_fraction"], cell["synthetic_ratio"]) if cell else ""
    mats = confusion_by_arm(load_runs(ctx), summary)
    figs = [charts.confusion_heatmap(m, c, f"confusion — {arm} ({where})") for arm, (m, c) in mats.items()]
    while len(figs) < 2:
        figs.append(charts.confusion_heatmap(np.zeros((0, 0)), [], "confusion"))
    written = ctx.workspace.summary_md
    headline = written.read_text(encoding="utf-8") if written.exists() else \
        f"{written} is missing (core writes it with summary.json): rerun `python -m core run`."
    csv = str(runs_file(ctx)) if runs_file(ctx).exists() else None
    curve = charts.accuracy_curve(curve_table(summary), budget_axis(summary)[1])
    return (*job, headline, curve, charts.accuracy_bars(table), charts.recall_bars(recall_table(summary)),
            figs[0], figs[1], table.drop(columns=["mean", "std"]), csv)


def build(ctx: AppContext) -> dict:
    with gr.Row():
        run_btn = gr.Button("Run augmented experiment", variant="primary", elem_id="run-experiment")
        stop_btn = gr.Button("Stop", variant="stop")
        seeds = gr.Number(len(ctx.config.experiment.seeds), label="seeds", precision=0, minimum=1)
    note = gr.Markdown()
    status_md = gr.Markdown(elem_id="results-status")
    bar = gr.HTML()
    headline = gr.Markdown(elem_id="results-summary")
    curve_plot = gr.Plot(label="accuracy vs label budget", elem_id="accuracy-curve")
    with gr.Row():
        acc_plot = gr.Plot(label="accuracy")
        recall_plot = gr.Plot(label="per-class recall")
    with gr.Row():
        cm_a = gr.Plot(label="confusion matrix")
        cm_b = gr.Plot(label="confusion matrix")
    table = gr.Dataframe(label="mean ± std per setting", interactive=False)
    csv = gr.File(label="runs.csv (one row per run)", interactive=False)
    outputs = [status_md, bar, headline, curve_plot, acc_plot, recall_plot, cm_a, cm_b, table, csv]

    def on_run(seeds):
        try:
            return start_experiment(ctx, seeds)
        except UserError as e:
            raise gr.Error(str(e)) from e

    run_btn.click(on_run, seeds, note, concurrency_id=COMPUTE, concurrency_limit=1, api_name="experiment_start")
    stop_btn.click(lambda: stop_job(ctx, (JOB,)), None, note, queue=False, api_name="experiment_stop")
    timer = gr.Timer(3.0)
    # only the status line and bar tick often; the figures are rebuilt when core rewrites its files
    state = {"mtime": None}

    def tick():
        paths = (ctx.workspace.summary_json, ctx.workspace.summary_md, runs_file(ctx))
        mtime = tuple(p.stat().st_mtime_ns if p.exists() else None for p in paths)
        if mtime == state["mtime"]:
            status = ctx.runner.status()
            return (job_markdown(status), progress_html(status if status.get("name") == JOB else {}),
                    *[gr.skip()] * (len(outputs) - 2))
        state["mtime"] = mtime
        return refresh(ctx)

    timer.tick(tick, None, outputs, show_progress="hidden", queue=False, api_visibility="private")
    return {"refresh": (lambda: refresh(ctx), outputs)}
