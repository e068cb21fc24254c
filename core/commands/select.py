"""`python -m core select`: score a label budget's synthetic set once and export what the rule
keeps (core.evaluate.selection); rerunning with another rule re-filters the stored scores."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.cli import ProgressReporter, guarded
from core.commands import budget_parser, parse_budget
from core.evaluate.selection import STRATEGIES, apply_threshold, export_accepted, score_synthetic, select
from core.workspace import Workspace


@guarded
def cli(argv: list[str]) -> int:
    parser = budget_parser("python -m core select", "score synthetic images and export the accepted set")
    parser.add_argument("--threshold", type=float, default=None, help="keep p(target) >= T")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None)
    parser.add_argument("--quota", type=int, default=None, help="max images kept per class (0 = all)")
    parser.add_argument("--rescore", action="store_true", help="recompute scores.csv")
    parser.add_argument("--out", type=Path, default=None,
                        help="export folder (default: the budget's accepted/, workspace/accepted for the first)")
    args, cfg, ws = parse_budget(parser, argv)
    apply_threshold(pd.DataFrame(columns=["class", "confidence", "nearest_class", "centroid_distance"]),
                    cfg.selection.threshold if args.threshold is None else args.threshold,
                    args.strategy or cfg.selection.strategy, args.quota or 0)   # bad values fail first
    if args.rescore or not ws.synthetic_scores.exists():
        with ProgressReporter() as progress:
            score_synthetic(ws, cfg, progress=progress)
    kept = select(ws, cfg, args.threshold, args.strategy, args.quota)
    out = export_accepted(ws, kept, args.out)
    per_class = kept.groupby("class").agg(sum=("kept", "sum"), count=("kept", "count"), bar=("threshold", "first"))
    for name, r in per_class.iterrows():
        bar = "" if pd.isna(r["bar"]) else f" at threshold {r['bar']:.3f}"     # per class when calibrated
        print(f"{name}: kept {int(r['sum'])} of {int(r['count'])}{bar}")
    bad = kept[kept["error"].fillna("").astype(str) != ""] if "error" in kept else kept.iloc[:0]
    for row in bad.itertuples():
        print(f"skipped {row.file}: {row.error}")
    if Workspace.skipped_of(out).exists():
        for row in pd.read_csv(Workspace.skipped_of(out)).itertuples():
            print(f"not exported {row.file}: {row.reason}")
    print(f"exported {len(pd.read_csv(Workspace.manifest_of(out)))} images to {out}")
    return 0
