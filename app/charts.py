"""Plotly figure builders for the tabs (plain data in, a go.Figure out; no Gradio here)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

_LAYOUT = dict(template="plotly_white", margin=dict(l=40, r=10, t=40, b=35), height=300)


def _empty(title: str, hint: str) -> go.Figure:
    fig = go.Figure(layout=dict(_LAYOUT, title=title))
    fig.add_annotation(text=hint, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def training_curves(metrics: pd.DataFrame, title: str = "pre-training") -> go.Figure:
    """Loss, learning rate and images/s against step, stacked on three axes of one figure."""
    if metrics.empty or "step" not in metrics:
        return _empty(title, "no metrics yet: start a pre-training run")
    columns = ("loss", "lr", "images_per_s")
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[2, 1, 1])
    for row, col in enumerate(columns, start=1):
        if col in metrics:
            fig.add_trace(go.Scatter(x=metrics["step"], y=metrics[col], mode="lines", name=col), row=row, col=1)
        fig.update_yaxes(title_text=col, row=row, col=1)
    fig.update_layout(**dict(_LAYOUT, title=title, height=420, showlegend=True))
    return fig


def confidence_histograms(scores: pd.DataFrame, threshold: float, classes: list[str],
                          per_class: dict[str, float] | None = None) -> go.Figure:
    """One small histogram of target-class confidence per class, with its threshold line: the
    class's own (`per_class`, calibrated) or the global one."""
    if scores.empty:
        return _empty("confidence per class", "no stored scores")
    n = max(1, len(classes))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    confs = {}
    for name in classes:
        conf = scores.loc[scores["class"] == name, "confidence"].to_numpy(dtype=float)
        confs[name] = conf[np.isfinite(conf)]          # unreadable images carry NaN scores
    # cells past the last class stay empty (no axes drawn)
    specs = [[{} if r * cols + c < n else None for c in range(cols)] for r in range(rows)]
    fig = make_subplots(rows=rows, cols=cols, specs=specs, horizontal_spacing=0.08,
                        vertical_spacing=0.3 / rows,             # leaves room for each panel's title
                        subplot_titles=[f"{name} ({len(conf)})" for name, conf in confs.items()])
    bins = np.linspace(0, 1, 21)
    centers = (bins[:-1] + bins[1:]) / 2
    for i, (name, conf) in enumerate(confs.items()):
        r, c = divmod(i, cols)
        counts, _ = np.histogram(conf, bins=bins)
        bar = (per_class or {}).get(name, threshold)
        fig.add_trace(go.Bar(x=centers, y=counts, width=0.048, name=name,
                             marker_color=np.where(centers + 0.025 >= bar, "#2a9d8f", "#bbbbbb")),
                      row=r + 1, col=c + 1)
        # named by class, so move_threshold puts each line at its own class's threshold
        fig.add_vline(x=bar, line=dict(color="red", width=2), name=name, row=r + 1, col=c + 1)
    fig.update_xaxes(range=[0, 1])
    fig.update_annotations(font_size=11)
    what = "each class's calibrated threshold" if per_class else "threshold"
    fig.update_layout(**dict(_LAYOUT, title=f"confidence per class (red: {what})",
                             height=max(260, 60 + 190 * rows), showlegend=False, bargap=0.05))
    return fig


def move_threshold(fig: go.Figure, threshold: float, per_class: dict[str, float] | None = None) -> go.Figure:
    """Move the threshold lines of a figure built above (and recolour histogram bars) in place:
    a line or bar named by a class in `per_class` to that class's threshold, the rest to `threshold`.

    Rebuilding the nine-panel figure costs ~0.1 s of plotly validation; moving a line costs
    ~1 ms, which is what keeps the slider under its 0.3 s budget.
    """
    bars = per_class or {}
    with fig.batch_update():
        for shape in fig.layout.shapes:
            shape.x0 = shape.x1 = bars.get(shape.name, threshold)
        for trace in fig.data:
            if isinstance(trace, go.Bar):
                centers = np.asarray(trace.x, dtype=float)
                bar = bars.get(trace.name, threshold)
                trace.marker.color = np.where(centers + 0.025 >= bar, "#2a9d8f", "#bbbbbb")
    return fig


def acceptance_curve(curve: pd.DataFrame, threshold: float, per_class: dict[str, float] | None = None) -> go.Figure:
    """Accepted rate against the threshold (tidy rows: threshold, class, rate), per class and
    "all" (bold), with the current threshold marked (red) and, under calibration, each class's
    own threshold (dotted, in the class's colour)."""
    if curve.empty:
        return _empty("acceptance curve", "no stored scores")
    title = "accepted fraction vs threshold" + (" (dotted: per-class calibrated)" if per_class else "")
    fig = go.Figure(layout=dict(_LAYOUT, title=title, xaxis=dict(title="threshold", range=[0, 1]),
                                yaxis=dict(title="accepted", range=[0, 1.02])))
    palette = itertools.cycle(qualitative.Plotly)
    for name, part in curve.groupby("class", sort=False):
        bold = name == "all"
        colour = "black" if bold else next(palette)
        fig.add_trace(go.Scatter(x=part["threshold"], y=part["rate"], mode="lines", name=str(name),
                                 line=dict(width=4 if bold else 1.5, color=colour)))
        if per_class and str(name) in per_class:
            fig.add_vline(x=per_class[str(name)], line=dict(color=colour, width=1.5, dash="dot"), name=str(name))
    fig.add_vline(x=threshold, line=dict(color="red", width=2), name="all")
    return fig


def accuracy_bars(summary: pd.DataFrame) -> go.Figure:
    """Mean ± std accuracy, baseline vs augmented, grouped by label fraction × synthetic ratio."""
    if summary.empty:
        return _empty("accuracy", "no results yet: run the augmented experiment")
    fig = go.Figure(layout=dict(_LAYOUT, title="test accuracy (mean ± std over seeds)",
                                barmode="group", yaxis=dict(title="accuracy", range=[0, 1])))
    for arm, part in summary.groupby("arm", sort=False):
        fig.add_trace(go.Bar(x=part["setting"], y=part["mean"], name=str(arm),
                             error_y=dict(type="data", array=part["std"].fillna(0))))
    return fig


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _delta_hover(r) -> str:
    d, lo, hi, blo, bhi = (_num(r[k]) for k in ("delta", "delta_low", "delta_high", "boot_low", "boot_high"))
    seeds = f"{lo:+.3f} .. {hi:+.3f} over {int(r['delta_n'])} paired seeds" if lo is not None \
        else "no interval over seeds (fewer than 2 paired seeds)"
    images = f"{blo:+.3f} .. {bhi:+.3f} over {int(r['n_test'])} test images (paired bootstrap)" \
        if blo is not None else "no interval over test images"
    realised, mde = _num(r["realised_ratio"]), _num(r.get("mde"))
    return (f"{r['budget']} · {r['line']}<br>Δ accuracy (arm − baseline): {d:+.3f}<br>95% CI {seeds}"
            f"<br>95% CI {images}"
            + (f"<br>minimum detectable difference (80% power): {mde:.3f}" if mde is not None else "")
            + (f"<br>added ratio realised: {realised:.2f}" if realised is not None else "")
            + (f"<br>status: {r['status']}" if r["status"] != "ok" else ""))


def _colours(lines) -> dict:
    palette = itertools.cycle(qualitative.Plotly)
    return {line: "black" if i == 0 else next(palette) for i, line in enumerate(lines)}


def accuracy_curve(table: pd.DataFrame, x_title: str) -> go.Figure:
    """Test accuracy against the label budget, one line per arm (mean over seeds, ± std bars; the
    baseline first, in black), and beside it each arm's paired difference to the baseline per
    budget with its two 95% intervals: over seeds (Student t, circles) and over test images
    (bootstrap, diamonds), side by side within the budget. Columns as app.tab_results.curve_table;
    × marks a cell whose status says it is not a result."""
    if table.empty:
        return _empty("accuracy vs label budget", "no results yet: run the augmented experiment")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.1,
                        subplot_titles=("test accuracy (mean ± std over seeds)",
                                        "paired Δ to the baseline (95% CIs: ● over seeds, ◆ over test images)"))
    colour = _colours(table["line"].drop_duplicates())
    for line, part in table.groupby("line", sort=False):
        symbols = ["circle" if s == "ok" else "x" for s in part["status"]]
        hover = [f"{r['budget']}<br>{line}<br>accuracy {r['mean']:.3f} ± {(_num(r['std']) or 0):.3f} "
                 f"(mean ± std over {r['n']} seeds)" + (f"<br>status: {r['status']}" if r["status"] != "ok" else "")
                 + (f"<br>{r['shortfall']}" if isinstance(r["shortfall"], str) else "")
                 for _, r in part.iterrows()]
        fig.add_trace(go.Scatter(x=part["x"], y=part["mean"], mode="lines+markers", name=str(line),
                                 legendgroup=str(line), marker=dict(symbol=symbols, size=9, color=colour[line]),
                                 line=dict(color=colour[line]),
                                 error_y=dict(type="data", array=part["std"].fillna(0).tolist()),
                                 hovertext=hover, hoverinfo="text"), row=1, col=1)
    budgets = table.drop_duplicates("x").sort_values("x")
    where = {x: i for i, x in enumerate(budgets["x"])}
    arms = table[table["arm"] != "baseline"]
    lines = list(arms["line"].drop_duplicates())
    slot = 0.8 / max(len(lines), 1)          # each line's share of a budget's width on the Δ panel
    for j, (line, part) in enumerate(arms.groupby("line", sort=False)):
        hover = [_delta_hover(r) for _, r in part.iterrows()]
        d = part["delta"].astype(float)
        centre = np.array([where[x] for x in part["x"]]) - 0.4 + (j + 0.5) * slot
        for kind, shift, low, high, symbol in (("seeds", -0.2, "delta_low", "delta_high", "circle"),
                                               ("test images", 0.2, "boot_low", "boot_high", "diamond")):
            fig.add_trace(go.Scatter(
                x=centre + shift * slot, y=d, mode="markers", name=f"Δ {line}: 95% CI over {kind}",
                legendgroup=str(line), showlegend=False, hovertext=hover, hoverinfo="text",
                marker=dict(size=8, symbol=symbol, color=colour[line]), error_y=dict(
                    type="data", array=(part[high].astype(float) - d).fillna(0).tolist(),
                    arrayminus=(d - part[low].astype(float)).fillna(0).tolist())), row=1, col=2)
    fig.add_hline(y=0, line=dict(color="grey", dash="dash", width=1), row=1, col=2)
    span = [math.log10(budgets["x"].min()) - 0.2, math.log10(budgets["x"].max()) + 0.2]
    fig.update_xaxes(type="log", title_text=x_title, tickvals=budgets["x"].tolist(),
                     ticktext=budgets["budget"].tolist(), range=span, row=1, col=1)
    fig.update_xaxes(title_text="label budget", tickvals=list(range(len(budgets))), ticktext=budgets["budget"].tolist(),
                     range=[-0.5, len(budgets) - 0.5], row=1, col=2)
    fig.update_yaxes(title_text="test accuracy", row=1, col=1)
    fig.update_yaxes(title_text="Δ accuracy", row=1, col=2)
    notes = []
    if len(budgets) < 2:
        notes.append(f"one label budget ({budgets['budget'].iloc[0]}) gives no curve: "
                     "add budgets to experiment.label_fractions")
    if (table["status"] != "ok").any():
        notes.append("× = not a result (status in the hover and the table)")
    for i, text in enumerate(notes):
        fig.add_annotation(text=text, showarrow=False, x=0, y=-0.28 - 0.08 * i, xref="paper",
                           yref="paper", xanchor="left", font=dict(size=11, color="#b5651d"))
    fig.update_annotations(font_size=11)
    fig.update_layout(**dict(_LAYOUT, height=430 + 25 * len(notes), margin=dict(l=50, r=10, t=50, b=90 + 25 * len(notes)),
                             legend=dict(orientation="h", y=-0.35 - 0.08 * len(notes))))
    return fig


def recall_bars(recall: pd.DataFrame) -> go.Figure:
    """Per-class recall, one bar group per arm (columns: class, arm, recall)."""
    if recall.empty:
        return _empty("per-class recall", "no per-class recall in the results")
    fig = go.Figure(layout=dict(_LAYOUT, title="per-class recall (mean over seeds)",
                                barmode="group", yaxis=dict(title="recall", range=[0, 1])))
    for arm, part in recall.groupby("arm", sort=False):
        fig.add_trace(go.Bar(x=part["class"], y=part["recall"], name=str(arm)))
    return fig


def confusion_heatmap(matrix: np.ndarray, classes: list[str], title: str) -> go.Figure:
    """Row-normalised confusion matrix (true class in rows) with the counts as hover text."""
    if matrix.size == 0:
        return _empty(title, "no confusion matrix in the results")
    counts = np.asarray(matrix, dtype=float)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=norm, x=classes, y=classes, zmin=0, zmax=1, colorscale="Blues",
                               text=counts.astype(int), texttemplate="%{text}",
                               hovertemplate="true %{y}<br>pred %{x}<br>%{z:.2f}<extra></extra>"),
                    layout=dict(_LAYOUT, title=title, height=360,
                                xaxis=dict(title="predicted"),
                                yaxis=dict(title="true", autorange="reversed")))
    return fig


def guidance_sweep(table: pd.DataFrame) -> go.Figure:
    """Per class, against the guidance scale: acceptance and coverage (left axis, 0-1) and the
    Fréchet distance (right axis), each floor dashed. Columns: class, guidance_scale, acceptance,
    coverage, fd, floor_coverage, floor_fd, chosen (optional)."""
    if table.empty:
        return _empty("quality vs guidance scale", "no sweep yet: press Evaluate quality or Auto-tune guidance")
    classes = sorted(table["class"].astype(str).unique())
    cols = min(4, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=classes,
                        specs=[[{"secondary_y": True}] * cols for _ in range(rows)])
    series = [("acceptance", "#2a9d8f", False), ("coverage", "#264653", False), ("fd", "#e76f51", True)]
    for i, name in enumerate(classes):
        r, c = divmod(i, cols)
        part = table[table["class"].astype(str) == name].sort_values("guidance_scale")
        x = part["guidance_scale"].map(lambda v: f"{v:g}")      # categories: the grid is uneven (0..30)
        for col, colour, right in series:
            if col not in part:
                continue
            fig.add_trace(go.Scatter(x=x, y=part[col], mode="lines+markers", name=col, legendgroup=col,
                                     showlegend=i == 0, line=dict(color=colour)),
                          row=r + 1, col=c + 1, secondary_y=right)
            floor = f"floor_{col}"
            if floor in part and part[floor].notna().any():
                fig.add_trace(go.Scatter(x=x, y=part[floor], mode="lines", name=f"{col} floor (real vs real)",
                                         legendgroup=floor, showlegend=i == 0,
                                         line=dict(color=colour, dash="dash", width=1)),
                              row=r + 1, col=c + 1, secondary_y=right)
        if "chosen" in part and part["chosen"].astype(bool).any():
            pick = part[part["chosen"].astype(bool)]
            fig.add_trace(go.Scatter(x=pick["guidance_scale"].map(lambda v: f"{v:g}"), y=pick["coverage"],
                                     mode="markers", marker=dict(symbol="star", size=14, color="gold"),
                                     name="chosen", legendgroup="chosen", showlegend=i == 0),
                          row=r + 1, col=c + 1)
        fig.update_yaxes(range=[0, 1.02], row=r + 1, col=c + 1, secondary_y=False)
    fig.update_layout(**dict(_LAYOUT, height=max(300, 260 * rows), title="quality vs guidance scale "
                             "(left: acceptance, coverage; right: FD; dashed: real-vs-real floor)"))
    fig.update_xaxes(title_text="guidance scale")
    return fig
