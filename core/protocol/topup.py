"""The synthetic ratio asked is the ratio delivered: per-class wants, top-up sampling, the draw.

An augmented run adds round(ratio * n_c) accepted synthetic images of each class c, where n_c is
the class's count in the run's real training set, so the class prior stays the real one. A class
with too few accepted images gets more sampled (bounded rounds, `experiment.topup_rounds`), scored
and filtered before any run draws; what still falls short is recorded per class, never hidden.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from core.config.lab_config import LabConfig
from core.workspace import Workspace


def class_wants(real: pd.DataFrame, ratio: float) -> dict[int, int]:
    """Synthetic images wanted per class label for `ratio` over the real training frame."""
    counts = real["label"].value_counts()
    return {int(label): int(round(ratio * n)) for label, n in counts.sort_index().items()}


def draw_synthetic(accepted: pd.DataFrame, real: pd.DataFrame, ratio: float, seed: int
                   ) -> tuple[pd.DataFrame, dict[int, dict]]:
    """(the drawn images [path, label], per class {"wanted", "drawn", "accepted"}); seeded, each
    class capped by what it has accepted.

    Args:
        accepted (`pd.DataFrame`): the accepted synthetic images (`path`, `label`).
        real (`pd.DataFrame`): the real training images; each class wants `ratio` times its count.
        ratio (`float`): the synthetic ratio.
        seed (`int`): the draw's seed (with the label, per class).

    Returns:
        `tuple[pd.DataFrame, dict[int, dict]]`: as above, keyed by label.
    """
    parts, report = [], {}
    for label, want in class_wants(real, ratio).items():
        pool = accepted[accepted["label"] == label]
        k = min(len(pool), want)
        report[label] = {"wanted": want, "drawn": k, "accepted": int(len(pool))}
        if k:
            parts.append(pool.sample(n=k, random_state=np.random.default_rng([seed, label])))
    cols = ["path", "label"]
    return (pd.concat(parts)[cols] if parts else pd.DataFrame(columns=cols)), report


def threshold_of(rows: pd.DataFrame) -> float | None:
    """The threshold a class's selected rows were held to (None under the centroid rule)."""
    bar = rows["threshold"].dropna() if "threshold" in rows else rows.iloc[:0]
    return float(bar.iloc[0]) if len(bar) else None


def accepted_images(ws: Workspace, cfg: LabConfig) -> pd.DataFrame:
    """The budget's accepted synthetic images (file, path, label, class) under the config's rule."""
    from core.evaluate.selection import synthetic_path
    from core.evaluate.selection import current_selection
    kept = current_selection(ws, cfg)
    kept = kept[kept["kept"]]

    def where(file, cls) -> str:
        # an installed demo bundle ships only the accepted copies of a non-primary budget's images
        src = synthetic_path(ws, file)
        copy = ws.accepted_dir / str(cls) / src.name
        return str(src if src.exists() or not copy.exists() else copy)
    return kept.assign(path=[where(f, c) for f, c in zip(kept["file"], kept["class"])],
                       label=kept["label"].astype(int))


def top_up(ws: Workspace, cfg: LabConfig, wants: dict[int, int], classes: list[str],
           progress=None, stop=None) -> dict:
    """Sample more of each class whose accepted count is below its want, up to
    `experiment.topup_rounds` rounds of at most `sampling.num_per_class` images (round r uses
    seeds num_per_class * r onward, so reruns find them done). Returns per class
    {"wanted", "accepted", "generated", "rounds"} and whether anything was added.

    Args:
        ws (`Workspace`): the budget view (new images are scored and exported there).
        cfg (`LabConfig`): its sampling, selection and experiment sections.
        wants (`dict[int, int]`): label -> accepted images wanted.
        classes (`list[str]`): the class names, in label order.
        progress (`Callable[[dict], None]`, *optional*, defaults to `None`): progress reports.
        stop (`threading.Event`, *optional*, defaults to `None`): when set, the work stops early.

    Returns:
        `dict`: as above.
    """
    from core.generate.sampling import SEED_STRIDE, generate_images
    from core.evaluate.selection import export_accepted, score_synthetic
    from core.evaluate.selection import current_selection
    from core.protocol.stages import mark_done
    s, added, t0 = cfg.sampling, 0, time.perf_counter()
    for r in range(1, cfg.experiment.topup_rounds + 1):
        kept = current_selection(ws, cfg)
        short = {}
        for label, want in wants.items():
            rows = kept[kept["label"] == label]
            accepted = int(rows["kept"].sum())
            if accepted < want:
                rate = accepted / max(len(rows), 1)
                # enough to cover the gap at the class's acceptance rate so far, with a margin
                short[label] = s.num_per_class if rate == 0 else \
                    min(s.num_per_class, math.ceil(1.25 * (want - accepted) / rate))
        if not short:
            break
        for label, n in short.items():
            if stop is not None and stop.is_set():
                return {"stopped": True}
            start = s.seed + label * SEED_STRIDE + r * s.num_per_class
            rows = generate_images(ws, cfg, classes[label], n, start, progress=progress, stop=stop)
            added += len(rows)
        score_synthetic(ws, cfg, reuse=True)
    kept = current_selection(ws, cfg)
    if added:   # the accepted export is the selection stage's output: it now includes the top-up
        export_accepted(ws, kept)
        mark_done(ws, cfg, "selection", {"accepted": int(kept["kept"].sum()), "generated": len(kept),
                                          "topped_up": added}, time.perf_counter() - t0)
    report = {}
    for label, want in wants.items():
        rows = kept[kept["label"] == label]
        # from the files, so a rerun reports the same: the top-up round of the newest seed
        k = rows["seed"].astype(int) - s.seed - label * SEED_STRIDE
        report[classes[label]] = {"wanted": want, "accepted": int(rows["kept"].sum()),
                                  "generated": int(len(rows)),
                                  "rounds": int(k.max() // s.num_per_class) if len(rows) else 0,
                                  # the bar its images were held to: calibrated per class or global
                                  "threshold": threshold_of(rows)}
    return {"stopped": False, "added": added, "per_class": report}
