"""`python -m core evaluate`: fidelity, diversity and memorisation of a label budget's synthetic
images (or any class-per-folder set) beside real-vs-real floors (core.quality)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.commands import add_budget, budget_view
from core.quality import evaluate, format_table, json_report


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core evaluate",
                                     description="fidelity, diversity and memorisation of synthetic images "
                                                 "per class x guidance scale, beside real-vs-real floors")
    add_common(parser)
    add_budget(parser)
    parser.add_argument("--synthetic", type=Path, default=None,
                        help="a class-per-folder image set to measure instead of the workspace's own")
    parser.add_argument("--features", default=None,
                        help="filter (default: the filter classifier's pooled features) | timm:NAME:PATH.safetensors")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cfg, ws = resolve_config(args), workspace(args)
    ws = budget_view(ws, cfg, args.budget)
    with ProgressReporter() as progress:
        result = evaluate(ws, cfg, synthetic=args.synthetic, features=args.features, progress=progress)
    if args.json:
        print(json.dumps(json_report(result)))
    else:
        print(format_table(result))
        for path, reason in result["skipped"].items():
            print(f"skipped {path}: {reason}")
    return 0
