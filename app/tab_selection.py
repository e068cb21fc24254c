"""Tab 3 — confidence-threshold browsing over STORED scores (synthetic/scores.csv).

Moving the slider never recomputes a classifier: the scores table is read once (cached by the
file's mtime and size) and re-filtered with core.evaluate.selection.apply_threshold. Under
`selection.calibration` the per-class thresholds are core's (synthetic/thresholds.csv, written
when the scores are), with the slider as their cap (core.evaluate.selection.thresholds_at). The
counts table says per class how many images pass each check (confidence, centroid, and the
realism checks against the real class when the scores carry them), and how many of the budget's
real validation images the same rule keeps (synthetic/val_scores.csv, as core wrote it).
"""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from app import charts, quality_panel, widgets
from app.context import COMPUTE, AppContext, FileCache, job_markdown
from app.widgets import bounds, options
from core.config.lab_config import REALISM_CHECKS
from core.config.requests import request_count, request_text, selection_request
from core.errors import UserError
from core.protocol.jobs import JobBusy

ALL = "all classes"
SHOWS = ("accepted", "rejected", "all")      # what the gallery shows
MAX_PER_CLASS = 64                           # gallery images per class
CURVE_POINTS = np.round(np.linspace(0, 1, 51), 3)
_tables = FileCache()
_figures: dict[tuple, tuple] = {}      # (scores table, its figures): only their threshold lines move
_figures_lock = threading.Lock()


def scores_file(ctx: AppContext) -> Path:
    return ctx.workspace.synthetic_scores


def cached_scores(ctx: AppContext) -> pd.DataFrame:
    """The stored scores with absolute image paths, sorted for the gallery; cached until the file changes."""
    path = scores_file(ctx)
    if not path.exists():
        return pd.DataFrame(columns=["file", "class", "confidence"])
    return _tables.get(path, lambda p: _scores_for_browsing(ctx, p))


def _scores_for_browsing(ctx: AppContext, path: Path) -> pd.DataFrame:
    from core.evaluate.selection import load_scores, synthetic_path
    frame = load_scores(ctx.workspace)
    missing = {"file", "class", "confidence"} - set(frame.columns)
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    frame["class"] = frame["class"].astype(str)
    frame["image_path"] = [str(synthetic_path(ctx.workspace, f)) for f in frame["file"].astype(str)]
    return frame.sort_values(["class", "confidence"], ascending=[True, False], kind="stable")


def selected(scores: pd.DataFrame, threshold: float, strategy: str, quota: int,
             per_class: dict[str, float] | None = None, realism=()) -> pd.DataFrame:
    """core.evaluate.selection.apply_threshold's table: `kept` and a pass_* column per check."""
    from core.evaluate.selection import apply_threshold
    return apply_threshold(scores, float(threshold), strategy, int(quota or 0), per_class, tuple(realism or ()))


def usable_checks(scores: pd.DataFrame, realism) -> tuple[tuple[str, ...], str]:
    """(the realism checks the stored scores carry, a note on any they lack)."""
    from core.evaluate.selection import REALISM_COLUMNS
    have = tuple(c for c in realism or () if REALISM_COLUMNS[c] in scores)
    lacking = [c for c in realism or () if c not in have]
    note = (f" · the stored scores predate the {'/'.join(lacking)} check: press **Score synthetic images**"
            if lacking else "")
    return have, note


def class_bars(thresholds: pd.DataFrame | None) -> dict[str, float] | None:
    return None if thresholds is None else dict(zip(thresholds["class"].astype(str), thresholds["threshold"]))


def calibration(ctx: AppContext, threshold: float, strategy: str,
                scores: pd.DataFrame) -> tuple[pd.DataFrame | None, str]:
    """(core's per-class thresholds at this slider position, or None; what the tab says of them)."""
    sel = ctx.config.selection
    if sel.calibration == "none":
        return None, ""
    from core.evaluate.selection import MIN_VAL_IMAGES, load_thresholds, thresholds_at
    stored = load_thresholds(ctx.workspace)
    if strategy != "threshold":
        return None, " · per-class thresholds are not used by the centroid rule"
    # scores made before filter_hash was stored cannot say which classifier made them
    made_by = set(scores["filter_hash"].astype(str)) if "filter_hash" in scores else None
    if stored.empty or made_by not in (None, set(stored["filter_hash"].astype(str))) or \
            not np.allclose(stored["quantile"], sel.calibration_quantile):
        what = "is not written yet" if stored.empty else "is from another filter classifier or quantile"
        return None, (f" · per-class calibration is on (selection.calibration={sel.calibration}) but "
                      f"{ctx.workspace.selection_thresholds.name} {what}: press **Score synthetic images**; "
                      "the slider's threshold applies to every class meanwhile")
    table = thresholds_at(stored, float(threshold))
    n = int(table["n_val_images"].sum())
    fallback = int((table["n_val_images"] < MIN_VAL_IMAGES).sum())
    note = (f" · **per-class thresholds calibrated on {n} validation images** (q{sel.calibration_quantile:g}"
            f" of each class's real validation confidences, at most the slider's {float(threshold):.2f};"
            " each class's rule in the table)")
    if fallback:
        note += f"; {fallback} class(es) with fewer than {MIN_VAL_IMAGES} validation images keep the slider's"
    return table, note


CHECK_TITLES = {"confidence": "pass confidence", "centroid": "pass centroid", "knn": "pass k-NN realism",
                "colour": "pass colour range"}


def counts_table(chosen: pd.DataFrame, classes: list[str], thresholds: pd.DataFrame | None = None,
                 real: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per class and "all": accepted / rejected / total, how many pass each check the scores
    carry, and (`real`, the same rule over the real validation images) how many of those it keeps."""
    from core.evaluate.selection import REALISM_COLUMNS, check_counts
    counts = check_counts(chosen, classes)
    counts.loc["all"] = counts.sum()
    table = pd.DataFrame({"class": counts.index, "accepted": counts["kept"].to_numpy(),
                          "rejected": (counts["images"] - counts["kept"]).to_numpy(),
                          "total": counts["images"].to_numpy()})
    for check, title in CHECK_TITLES.items():
        if check not in REALISM_COLUMNS or REALISM_COLUMNS[check] in chosen:
            table[title] = counts[check].to_numpy()
    if real is not None:
        val = check_counts(real, classes)
        val.loc["all"] = val.sum()
        table["real val kept"] = [f"{k} of {n}" for k, n in zip(val["kept"], val["images"])]
    if thresholds is None:
        return table
    # what each class was held to and why: a calibrated bar, or the global one when it could not be
    rows = thresholds.set_index(thresholds["class"].astype(str))
    return table.assign(threshold=table["class"].map(rows["threshold"].round(3)),
                        rule=table["class"].map(rows["rule"]).fillna(""))


def real_validation(ctx: AppContext, scores: pd.DataFrame, rule: tuple) -> pd.DataFrame | None:
    """The budget's real validation images under the same rule, when core has scored them with
    the filter classifier that scored the synthetic images (synthetic/val_scores.csv)."""
    from core.evaluate.selection import SCORE_COLUMNS, apply_threshold
    path = ctx.workspace.val_scores
    if not path.exists():
        return None
    val = pd.read_csv(path, keep_default_na=False, na_values=[""],
                      dtype={"class": str, "nearest_class": str, "error": str})
    made_by = set(scores["filter_hash"].astype(str)) if "filter_hash" in scores else set()
    if not set(SCORE_COLUMNS) <= set(val.columns) or set(val["filter_hash"].astype(str)) != made_by:
        return None
    threshold, strategy, _, bars, realism = rule
    return apply_threshold(val, threshold, strategy, 0, bars, realism)


def gallery_items(scores: pd.DataFrame, mask: pd.Series, show: str, class_filter: str,
                  per_class: int, copies: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(path, caption) sorted by confidence within each class; at most `per_class` per class.
    Images the last quality evaluation found as close to a real image as real images are to each
    other (`copies`) say so in their caption."""
    chosen = scores if show == "all" else scores[mask if show == "accepted" else ~mask]
    if class_filter and class_filter != ALL:
        chosen = chosen[chosen["class"] == class_filter]
    chosen = chosen.groupby("class", sort=True).head(int(per_class))
    return [(p, f"{c} · {conf:.2f}" + (" · ⚠ likely copy" if p in copies else "")) for p, c, conf in
            zip(chosen["image_path"], chosen["class"], chosen["confidence"])]


def refilter(ctx: AppContext, threshold: float, strategy: str, quota: int, show: str = "accepted",
             class_filter: str = ALL, per_class: int = 8, realism=None):
    """Slider handler: (summary markdown, counts table, gallery, histograms, acceptance curve).
    `realism`: the checks against the real class to require too (None: the config's)."""
    threshold, strategy, quota, realism = selection_request(threshold, strategy, quota, realism)
    show, class_filter = request_text("show", show, SHOWS), request_text("class_name", class_filter, class_choices(ctx))
    per_class = request_count("per_class", per_class, MAX_PER_CLASS)
    scores = cached_scores(ctx)
    if scores.empty:
        empty = pd.DataFrame(columns=["class", "accepted", "rejected", "total"])
        return (hint(ctx), empty, [], charts.confidence_histograms(scores, threshold, []),
                charts.acceptance_curve(pd.DataFrame(), threshold))
    classes = sorted(scores["class"].unique())
    thresholds, note = calibration(ctx, threshold, strategy, scores)
    bars = class_bars(thresholds)
    checks, lacking = usable_checks(scores, ctx.config.selection.realism if realism is None else realism)
    chosen = selected(scores, threshold, strategy, quota, bars, checks)
    mask = chosen["kept"].astype(bool)
    real = real_validation(ctx, scores, (float(threshold), strategy, 0, bars, checks))
    table = counts_table(chosen, classes, thresholds, real)
    total = int(table["total"].iloc[-1])
    accepted = int(table["accepted"].iloc[-1])
    at = f"per-class thresholds (global {float(threshold):.2f})" if bars else f"threshold {float(threshold):.2f}"
    summary = f"**{accepted} accepted / {total - accepted} rejected** of {total} stored images at {at} ({strategy})"
    summary += f" · also required: {' + '.join(checks)} against the real class" if checks else ""
    summary += note + lacking
    copies = quality_panel.likely_copies(ctx)
    if copies:
        summary += f" · {len(copies)} likely copies of real images (nearest-neighbour audit)"
    return (summary, table, gallery_items(scores, mask, show, class_filter, per_class, copies),
            *figures(ctx, scores, classes, float(threshold), bars))


def figures(ctx: AppContext, scores: pd.DataFrame, classes: list[str], threshold: float,
            per_class: dict[str, float] | None = None) -> tuple:
    """Histograms and acceptance curve as serialized plots; built once per scores table (and
    calibration), then only their threshold lines move (see charts.move_threshold)."""
    from gradio.components.plot import PlotData

    from core.evaluate.selection import acceptance_curve
    key = (str(scores_file(ctx)), tuple(sorted(per_class or ())))
    with _figures_lock:
        made_from, figs = _figures.get(key, (None, None))
        if made_from is not scores:
            _figures.clear()
            figs = (charts.confidence_histograms(scores, threshold, classes, per_class),
                    charts.acceptance_curve(acceptance_curve(scores, CURVE_POINTS), threshold, per_class))
            _figures[key] = (scores, figs)
        # serialized under the lock: the cached figures are shared between sessions
        return tuple(PlotData(type="plotly", plot=charts.move_threshold(f, threshold, per_class).to_json())
                     for f in figs)


def export(ctx: AppContext, threshold: float, strategy: str, quota: int, realism=None) -> str:
    """Write the accepted set (accepted/CLASS/*.png + manifest) through core.evaluate.selection."""
    from core.evaluate.selection import export_accepted
    threshold, strategy, quota, realism = selection_request(threshold, strategy, quota, realism)
    scores = cached_scores(ctx)
    if scores.empty:
        raise UserError(hint(ctx))
    thresholds, _ = calibration(ctx, threshold, strategy, scores)
    checks, _ = usable_checks(scores, ctx.config.selection.realism if realism is None else realism)
    kept = selected(scores, threshold, strategy, quota, class_bars(thresholds), checks)
    try:                    # replacing accepted/ must not race a job that reads it
        with ctx.runner.hold("export"):
            out = export_accepted(ctx.workspace, kept)
    except JobBusy as e:
        raise UserError(f"{e}; export when it has finished") from e
    return f"exported {int(kept['kept'].sum())} accepted images to {out}"


def start_scoring(ctx: AppContext) -> str:
    from core.evaluate.selection import score_synthetic
    if not ctx.workspace.synthetic_manifest.exists():
        raise UserError("no synthetic images to score yet: run `python -m core sample` "
                        "(or the full `python -m core run`) first")
    try:
        ctx.runner.start("scoring", score_synthetic, ws=ctx.workspace, cfg=ctx.config)
    except JobBusy as e:
        raise UserError(str(e)) from e
    return "scoring started; the view refreshes when it finishes"


def class_choices(ctx: AppContext) -> list[str]:
    scores = cached_scores(ctx)
    return [ALL, *sorted(scores["class"].unique())] if not scores.empty else [ALL]


def hint(ctx: AppContext) -> str:
    if ctx.workspace.synthetic_manifest.exists():
        return "Synthetic images found but not scored yet: press **Score synthetic images**."
    return (f"No stored scores in {scores_file(ctx)}. Generate a synthetic set and score it: "
            f"`python -m core run --workspace {ctx.workspace.root}` (or `python -m core sample` "
            "then `python -m core select`).")


def build(ctx: AppContext) -> dict:
    sel = ctx.config.selection
    with gr.Row():
        threshold = widgets.slider(**bounds(sel, "threshold"), value=sel.threshold, step=0.01,
                              label="confidence threshold", elem_id="threshold-slider")
        strategy = widgets.radio(options(sel, "strategy"), value=sel.strategy, label="strategy")
        quota = widgets.number(sel.quota_per_class, label="quota per class (0 = none)", precision=0,
                          **bounds(sel, "quota_per_class"))
        realism = widgets.checkbox_group(list(REALISM_CHECKS), value=list(sel.realism),
                                   label="also require (vs the class's real images)")
    with gr.Row():
        show = widgets.radio(list(SHOWS), value="accepted", label="gallery shows")
        class_filter = widgets.dropdown(class_choices(ctx), value=ALL, label="class")
        per_class = widgets.slider(1, MAX_PER_CLASS, value=8, step=1, label="images per class")
    summary = gr.Markdown(elem_id="selection-summary")
    with gr.Row():
        counts = gr.Dataframe(label="accepted / rejected per class", interactive=False)
        curve_plot = gr.Plot(label="acceptance curve")
    hist = gr.Plot(label="confidence histograms")
    gallery = gr.Gallery(label="sorted by confidence within each class", columns=8, height=420,
                         elem_id="selection-gallery", preview=False, fit_columns=False,
                         interactive=False)                 # an output: never an upload target
    quality_panel.build_neighbour(ctx, gallery)
    with gr.Row():
        score_btn = gr.Button("Score synthetic images")
        export_btn = gr.Button("Export accepted set", variant="primary")
    note = gr.Markdown()
    controls = [threshold, strategy, quota, show, class_filter, per_class, realism]
    outputs = [summary, counts, gallery, hist, curve_plot]

    def on_change(threshold, strategy, quota, show, class_name, per_class, realism):
        try:
            return refilter(ctx, threshold, strategy, quota, show, class_name, per_class, realism)
        except UserError as e:
            raise gr.Error(str(e)) from e

    for comp in controls:
        # slider drags fire often: only the last position matters, so older updates are dropped
        comp.change(on_change, controls, outputs, trigger_mode="always_last", show_progress="hidden",
                    api_name="refilter" if comp is threshold else None,
                    api_visibility="public" if comp is threshold else "private")

    def on_export(threshold, strategy, quota, realism):
        try:
            return export(ctx, threshold, strategy, quota, realism)
        except UserError as e:
            raise gr.Error(str(e)) from e

    def on_score():
        try:
            return start_scoring(ctx)
        except UserError as e:
            raise gr.Error(str(e)) from e

    export_btn.click(on_export, [threshold, strategy, quota, realism], note, concurrency_id=COMPUTE,
                     concurrency_limit=1, api_name="export_accepted")
    score_btn.click(on_score, None, note, concurrency_id=COMPUTE, concurrency_limit=1, api_name="score")

    def refresh(*values):
        status = ctx.runner.status()
        scoring = job_markdown(status) if status.get("name") == "scoring" else ""
        return (gr.update(choices=class_choices(ctx)), scoring, *on_change(*values))

    return {"refresh": (refresh, [class_filter, note, *outputs], controls)}
