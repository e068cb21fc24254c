"""summary.json as tables: the results (budget x ratio x arm, with both intervals and the MDE),
the exposure (views per image, added share), the quality of the accepted images and the
calibrated thresholds; `markdown_table` writes them as results/summary.md. The Augmentation tab
shows the same frames, so the file and the tab cannot disagree."""
from __future__ import annotations

import pandas as pd

from core.evaluate.summary import DETECT, cell_arms
from core.generate.model_card import markdown_table as frame_markdown

RESULT_COLUMNS = ["budget", "ratio", "arm", "seeds", "accuracy", "Δ accuracy (points)", "95% CI over seeds",
                  "95% CI over test images", "paired SD", "MDE (80% power)", "added (realised ratio)", "note"]


def _pts(v) -> str:
    return "" if v is None else f"{100 * v:+.1f}"


def _acc(stats: dict | None) -> str:
    return "n/a" if not stats or stats.get("mean") is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _budget(cell: dict) -> str:
    f = float(cell["label_fraction"])
    return f"{f:g}" if f <= 1 else f"{int(f)}/class"


def results_frame(summary: dict, metric: str = "accuracy") -> pd.DataFrame:
    """One row per budget for its baseline, then one per (ratio, arm): mean ± std over seeds, the
    paired difference to the baseline with its two 95% intervals, the paired SD, the MDE, and a
    note when the cell is not a result or cannot see 2 points."""
    rows, seen = [], set()
    for cell in summary.get("grid") or []:
        if cell["label_fraction"] not in seen:
            seen.add(cell["label_fraction"])
            rows.append({"budget": _budget(cell), "ratio": "", "arm": "baseline", "seeds": len(cell.get("seeds") or []),
                         "accuracy": _acc((cell.get("baseline") or {}).get(metric))})
        for arm, a in cell_arms(cell).items():
            d, boot = a["delta"].get(metric) or {}, (a.get("bootstrap") or {}).get(metric) or {}
            notes = [n for n in (a["status"] if a["status"] != "ok" else None,
                                 a.get("power") if metric == "accuracy" else None, a.get("shortfall")) if n]
            added = "" if a.get("n_added") is None or a.get("realised_ratio") is None else \
                f"{a['n_added']:.0f} ({a['realised_ratio']:.2f})"
            rows.append({"budget": _budget(cell), "ratio": f"{cell['synthetic_ratio']:g}", "arm": arm,
                         "seeds": d.get("n"), "accuracy": _acc(a["metrics"].get(metric)),
                         "Δ accuracy (points)": _pts(d.get("mean")),
                         "95% CI over seeds": f"{_pts(d['low'])} .. {_pts(d['high'])}" if d.get("low") is not None else "",
                         "95% CI over test images": f"{_pts(boot['low'])} .. {_pts(boot['high'])}" if boot else "",
                         "paired SD": "" if d.get("std") is None else f"{100 * d['std']:.1f}",
                         "MDE (80% power)": "" if d.get("mde") is None else f"{100 * d['mde']:.1f}",
                         "added (realised ratio)": added, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).fillna("")


def exposure_frame(summary: dict) -> pd.DataFrame:
    """Per budget and arm: optimizer steps, real + added batch, real views per image, the share of
    images seen that were added, and whether every run's real batches were its baseline's."""
    rows, seen = [], set()
    for cell in summary.get("grid") or []:
        items = [("baseline", cell.get("baseline_exposure") or {}, None)] if cell["label_fraction"] not in seen else []
        seen.add(cell["label_fraction"])
        items += [(f"{arm} ×{cell['synthetic_ratio']:g}", a.get("exposure") or {}, a.get("real_batches_match_baseline"))
                  for arm, a in cell_arms(cell).items()]
        for name, e, same in items:
            rows.append({"budget": _budget(cell), "arm": name, "steps": f"{e.get('steps', 0):.0f}",
                         "batch (real + added)": f"{e.get('real_batch', 0):.0f} + {e.get('added_batch', 0):.0f}",
                         "real views per image": f"{e.get('real_views_per_image', 0):.1f}",
                         "added share": f"{e.get('added_share', 0):.2f}",
                         "real batches = baseline's": "" if same is None else ("yes" if same else "NO")})
    return pd.DataFrame(rows)


def quality_frame(summary: dict) -> pd.DataFrame:
    """The accepted images per budget and class beside the real-vs-real floor."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    rows = []
    for name, q in (summary.get("quality") or {}).items():
        if q.get("error") or not q.get("per_class"):
            rows.append({"budget": name, "class": "", "note": q.get("error") or "no accepted synthetic image"})
            continue
        for c, m in q["per_class"].items():
            f = m["floor"]
            rows.append({"budget": name, "class": c, "n": m["n"], "FD (floor)": f"{fmt(m['fd'])} ({fmt(f.get('fd'))})",
                         "coverage (floor)": f"{fmt(m['coverage'])} ({fmt(f.get('coverage'))})",
                         "copy rate (floor)": f"{fmt(m['copy_rate'])} ({fmt(f.get('copy_rate'))})",
                         "features": q.get("features", "")})
    return pd.DataFrame(rows).fillna("")


def threshold_frame(summary: dict) -> pd.DataFrame:
    """Per budget and class: the calibrated threshold, its rule and the validation images read."""
    rows = []
    for name, b in (summary.get("budgets") or {}).items():
        cal = b.get("calibration")
        for c, v in ((cal or {}).get("per_class") or {}).items():
            rows.append({"budget": name, "class": c, "threshold": f"{v['threshold']:.3f}", "rule": v["rule"],
                         "validation images": v.get("n_val_images")})
    return pd.DataFrame(rows)


SELECTION_CHECKS = (("confidence", "confidence"), ("centroid", "centroid"), ("knn", "k-NN realism"),
                    ("colour", "colour range"), ("kept", "kept by the rule"))


def selection_frame(summary: dict) -> pd.DataFrame:
    """Per budget and class, the synthetic images passing each check and, in brackets, the real
    validation images passing it (a check that real images fail says so)."""
    rows = []
    for budget, per_class in ((summary.get("synthetic") or {}).get("checks") or {}).items():
        for c, n in per_class.items():
            rows.append({"budget": budget, "class": c, "generated": n["images"],
                         **{title: f"{n[k]} ({n['val_' + k]}/{n['val_images']})" if "val_images" in n else n[k]
                            for k, title in SELECTION_CHECKS}})
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> list[str]:
    return [frame_markdown(frame), ""] if not frame.empty else []


def _selection_title(summary: dict) -> str:
    rule = (summary.get("synthetic") or {}).get("rule") or {}
    realism = "+".join(rule.get("realism") or ()) or "none"
    return (f"Selection: synthetic images passing each check, real validation images in brackets "
            f"(rule: {rule.get('strategy', '?')}, realism checks: {realism})")


def markdown_table(summary: dict) -> str:
    """results/summary.md: status, the results table, the protocol in words, exposure, quality and
    thresholds as tables."""
    lines = []
    if summary.get("status", "complete") != "complete":
        lines.append(f"**{summary['status']}** (the grid is still running or was stopped)\n")
    lines += ["## Test accuracy per label budget, synthetic ratio and arm", ""] + _markdown(results_frame(summary))
    p = summary.get("protocol") or {}
    lines.append(f"Labels: {summary.get('label_subsets', '')}. Compute: {p.get('compute', '')}. "
                 f"BatchNorm: {p.get('norm', '')}; augmentation: {p.get('augment', '')} (stain jitter "
                 f"{p.get('stain_jitter', 0):g}). {p.get('labels', '')}.")
    kept = [f"{c['budget']}: {c['model_selection']}" for c in summary.get("grid") or [] if c.get("model_selection")]
    if kept:
        lines.append("Weights kept: " + "; ".join(dict.fromkeys(kept)) + ".")
    if p.get("power"):
        lines.append(f"Power: {p['power']}; a cell that cannot see {100 * DETECT:g} points says so.")
    lines.append("")
    for title, frame in (("Exposure: how each arm saw its real images", exposure_frame(summary)),
                         ("Quality of the accepted images (real-vs-real floor in brackets)", quality_frame(summary)),
                         ("Per-class thresholds", threshold_frame(summary)),
                         (_selection_title(summary), selection_frame(summary))):
        if not frame.empty:
            lines += [f"## {title}", ""] + _markdown(frame)
    for name, b in (summary.get("budgets") or {}).items():
        if b.get("filter_at_chance"):
            lines.append(f"Budget {name}: the filter classifier stayed at chance on validation (balanced accuracy "
                         f"{b.get('filter_val_balanced_accuracy')}); its selection is not meaningful.")
    return "\n".join(lines) + "\n"
