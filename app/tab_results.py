"""Tab 4 — augmentation vs baseline: one-click run of the grid (progress, stop) and its results
as core writes them (core.protocol.experiment.write_summary). It leads with the picture: every
arm against the label budget, and each arm's paired difference to the baseline with both 95%
intervals (over seeds, over test images); then one compact table (budget x ratio x arm, with the
paired SD and the minimum detectable difference), the exposure, quality and threshold tables
(core.evaluate.summary_tables, the same frames summary.md holds), and below those the accuracy
bars, per-class recall, confusion matrices and results/runs.csv. Nothing is recomputed here, so
the tab cannot disagree with the files."""
from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pandas as pd

from app import charts, widgets
from app.context import COMPUTE, AppContext, job_markdown, progress_html, stop_job
from core.config.requests import MAX_ITEMS, request_count
from core.errors import UserError
from core.evaluate.summary import cell_arms, main_cell
from core.evaluate.summary_tables import exposure_frame, quality_frame, results_frame, threshold_frame
from core.protocol.jobs import JobBusy

JOB = "experiment"
BASELINE = "baseline (real only)"
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


def _arm_stats(cell: dict, metric: str):
    """(arm, ratio, stats) for the cell's baseline and each of its arms."""
    yield "baseline", 0.0, (cell.get("baseline") or {}).get(metric) or {}
    for arm, a in cell_arms(cell).items():
        yield arm, cell["synthetic_ratio"], (a.get("metrics") or {}).get(metric) or {}


def accuracy_table(summary: dict, metric: str = "accuracy") -> pd.DataFrame:
    """summary.json's mean ± std over seeds per (label budget, synthetic ratio, arm), one row each;
    a budget's baseline, repeated in every cell of that budget, once."""
    rows = []
    for cell in summary.get("grid") or []:
        for arm, ratio, stats in _arm_stats(cell, metric):
            if stats.get("mean") is None:
                continue
            rows.append({"label_fraction": cell["label_fraction"], "synthetic_ratio": ratio, "arm": arm,
                         "setting": setting_of(cell["label_fraction"], ratio), "mean": stats["mean"],
                         "std": stats["std"], "n": len(stats.get("runs") or []),
                         "mean ± std": f"{stats['mean']:.3f} ± {stats['std']:.3f}"})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).drop_duplicates(["label_fraction", "synthetic_ratio", "arm"])
    return table.sort_values(["setting", "arm"], kind="stable").reset_index(drop=True)


CURVE_COLUMNS = ["x", "budget", "label_fraction", "synthetic_ratio", "arm", "line", "mean", "std", "n",
                 "status", "realised_ratio", "shortfall", "delta", "delta_low", "delta_high", "delta_n", "mde",
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


def line_of(arm: str, ratio: float) -> str:
    return BASELINE if arm == "baseline" else f"{arm} (×{ratio:g} asked)"


def curve_table(summary: dict, metric: str = "accuracy") -> pd.DataFrame:
    """One row per (budget, line) from summary.json's cells, as written: each arm's mean ± std
    over seeds, and for every arm but the baseline the paired difference with its interval over
    seeds (`delta`), its MDE and its interval over test images (`bootstrap`)."""
    x_key, _ = budget_axis(summary)
    rows = []
    for cell in summary.get("grid") or []:
        f, arms = cell["label_fraction"], cell_arms(cell)
        for arm, ratio, stats in _arm_stats(cell, metric):
            if stats.get("mean") is None or cell.get(x_key) is None:
                continue
            a = arms.get(arm) or {}
            delta, boot = (a.get("delta") or {}).get(metric) or {}, (a.get("bootstrap") or {})
            rows.append({"x": float(cell[x_key]), "budget": setting_of(f, 0.0), "label_fraction": f,
                         "synthetic_ratio": ratio, "arm": arm, "line": line_of(arm, ratio),
                         "mean": stats["mean"], "std": stats.get("std"), "n": len(stats.get("runs") or []),
                         "status": a.get("status", "ok"), "realised_ratio": a.get("realised_ratio"),
                         "shortfall": a.get("shortfall"), "delta": delta.get("mean"), "delta_low": delta.get("low"),
                         "delta_high": delta.get("high"), "delta_n": delta.get("n"), "mde": delta.get("mde"),
                         "boot_low": (boot.get(metric) or {}).get("low"), "boot_high": (boot.get(metric) or {}).get("high"),
                         "n_test": boot.get("n_test")})
    table = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    # a budget's baseline sits in every cell of that budget: once
    table = table.drop_duplicates(["label_fraction", "line"])
    return table.sort_values(["synthetic_ratio", "x"], kind="stable").reset_index(drop=True)   # baseline first


def recall_table(summary: dict) -> pd.DataFrame:
    """The main cell's mean per-class recall per arm, as summary.json holds it."""
    cell = main_cell(summary)
    per_arm = {"baseline": cell.get("baseline_recall") or (cell.get("per_class_recall") or {}).get("baseline") or {}}
    per_arm.update({arm: a.get("per_class_recall") or {} for arm, a in cell_arms(cell).items()})
    rows = [{"arm": arm, "class": name, "recall": value}
            for arm, per_class in per_arm.items() for name, value in per_class.items() if value is not None]
    return pd.DataFrame(rows, columns=["arm", "class", "recall"])


def confusion_by_arm(runs: pd.DataFrame, summary: dict) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per arm of the main cell, the confusion matrices runs.csv holds for its runs, summed over
    seeds (summary.json keeps no matrices); classes in summary.json's order."""
    cell, out = main_cell(summary), {}
    if runs.empty or not cell or "confusion_matrix" not in runs:
        return out
    in_cell = runs["label_fraction"] == cell["label_fraction"]
    arms = [("baseline", 0.0)] + [(arm, cell["synthetic_ratio"]) for arm in cell_arms(cell)]
    for arm, ratio in arms:
        names = ("selected", "augmented") if arm == "selected" else (arm,)     # older runs.csv: "augmented"
        part = runs[in_cell & runs["arm"].isin(names) & np.isclose(runs["synthetic_ratio"].fillna(0), ratio)]
        mats = [np.asarray(json.loads(m)) for m in part["confusion_matrix"] if isinstance(m, str)]
        if mats:
            out[arm] = (np.sum(mats, axis=0), list(summary.get("classes") or []))
    return out


def hint(ctx: AppContext) -> str:
    return (f"No results in {ctx.workspace.results_dir} yet. Press **Run augmented experiment** "
            f"(or run `python -m core run --workspace {ctx.workspace.root}`).")


def headline(summary: dict) -> str:
    """The grid's status and protocol in a few lines (the numbers are in the figure and tables)."""
    p = summary.get("protocol") or {}
    lines = [] if summary.get("status", "complete") == "complete" else \
        [f"**{summary['status']}** (the grid is still running or was stopped)"]
    if p:
        lines.append(f"Arms: {', '.join(p.get('arms') or [])}. {p.get('compute', '')}. BatchNorm: {p.get('norm')}; "
                     f"augmentation: {p.get('augment')} (stain jitter {p.get('stain_jitter', 0):g}).")
        kept = [f"{c.get('budget', c['label_fraction'])}: {c['model_selection']}"
                for c in summary.get("grid") or [] if c.get("model_selection")]
        if kept:
            lines.append("Weights kept: " + "; ".join(dict.fromkeys(kept)) + ".")
    else:
        lines.append("This summary.json predates the competitor arms and the power columns: rerun the grid.")
    return "\n\n".join(lines)


def start_experiment(ctx: AppContext, seeds: int | None = None) -> str:
    """One click: the baseline and every arm through core.protocol.experiment.run_all in the shared slot."""
    from core.protocol.experiment import run_all
    cfg = ctx.config
    if seeds is not None:                                   # an empty box: the config's seeds
        count = request_count("seeds", seeds, MAX_ITEMS)     # checked before anything is built from it
        cfg = ctx.with_overrides("experiment", {"seeds": tuple(range(count)), "budget_seeds": ()})
    try:
        ctx.runner.start(JOB, run_all, ws=ctx.workspace, cfg=cfg)
    except JobBusy as e:
        raise UserError(str(e)) from e
    return "experiment started (finished stages are skipped; a stopped run resumes)"


def refresh(ctx: AppContext):
    """(status, bar, headline, accuracy-vs-budget figure, results table, exposure table, quality
    table, threshold table, accuracy bars, recall plot, confusion plots, csv file)."""
    status = ctx.runner.status()
    job = (job_markdown(status), progress_html(status if status.get("name") == JOB else {}))
    summary = load_summary(ctx)
    if not summary.get("grid"):
        empty = charts.accuracy_bars(pd.DataFrame())
        return (*job, hint(ctx), charts.accuracy_curve(pd.DataFrame(), ""), None, None, None, None, empty,
                charts.recall_bars(pd.DataFrame()), empty, empty, None)
    cell = main_cell(summary)
    where = setting_of(cell["label_fraction"], cell["synthetic_ratio"]) if cell else ""
    mats = confusion_by_arm(load_runs(ctx), summary)
    figs = [charts.confusion_heatmap(m, c, f"confusion — {arm} ({where})") for arm, (m, c) in list(mats.items())[:2]]
    while len(figs) < 2:
        figs.append(charts.confusion_heatmap(np.zeros((0, 0)), [], "confusion"))
    csv = str(runs_file(ctx)) if runs_file(ctx).exists() else None
    curve = charts.accuracy_curve(curve_table(summary), budget_axis(summary)[1])
    return (*job, headline(summary), curve, results_frame(summary), exposure_frame(summary), quality_frame(summary),
            threshold_frame(summary), charts.accuracy_bars(accuracy_table(summary)),
            charts.recall_bars(recall_table(summary)), figs[0], figs[1], csv)


def build(ctx: AppContext) -> dict:
    with gr.Row():
        run_btn = gr.Button("Run augmented experiment", variant="primary", elem_id="run-experiment")
        stop_btn = gr.Button("Stop", variant="stop")
        seeds = widgets.number(len(ctx.config.experiment.seeds), label="seeds (every budget)", precision=0, minimum=1)
    note = gr.Markdown()
    status_md = gr.Markdown(elem_id="results-status")
    bar = gr.HTML()
    curve_plot = gr.Plot(label="accuracy vs label budget, every arm", elem_id="accuracy-curve")
    head = gr.Markdown(elem_id="results-summary")
    table = gr.Dataframe(label="test accuracy per budget × ratio × arm: paired Δ to the baseline, both 95% "
                               "intervals, paired SD and minimum detectable difference (points)",
                         interactive=False, wrap=True, elem_id="results-table")
    exposure = gr.Dataframe(label="exposure: how each arm saw its real images", interactive=False)
    quality = gr.Dataframe(label="quality of the accepted images (real-vs-real floor in brackets)", interactive=False)
    thresholds = gr.Dataframe(label="per-class thresholds", interactive=False)
    with gr.Accordion("accuracy bars, per-class recall, confusion matrices, runs.csv", open=False):
        with gr.Row():
            acc_plot = gr.Plot(label="accuracy")
            recall_plot = gr.Plot(label="per-class recall")
        with gr.Row():
            cm_a = gr.Plot(label="confusion matrix")
            cm_b = gr.Plot(label="confusion matrix")
        csv = gr.File(label="runs.csv (one row per run)", interactive=False)
    outputs = [status_md, bar, head, curve_plot, table, exposure, quality, thresholds, acc_plot, recall_plot,
               cm_a, cm_b, csv]

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
