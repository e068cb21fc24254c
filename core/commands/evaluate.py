"""`python -m core evaluate`: fidelity, diversity and memorisation of a label budget's synthetic
images (or any class-per-folder set) beside real-vs-real floors (core.evaluate.quality)."""
from __future__ import annotations

import json
from pathlib import Path

from core.cli import ProgressReporter, guarded
from core.commands import budget_parser, parse_budget
from core.evaluate.quality import measure_quality, format_table, json_report


@guarded
def cli(argv: list[str]) -> int:
    parser = budget_parser("python -m core evaluate", "fidelity, diversity and memorisation of synthetic "
                           "images per class x guidance scale, beside real-vs-real floors")
    parser.add_argument("--synthetic", type=Path, default=None,
                        help="a class-per-folder image set to measure instead of the workspace's own")
    parser.add_argument("--features", default=None,
                        help="filter (default: the filter classifier's pooled features) | timm:NAME:PATH.safetensors")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args, cfg, ws = parse_budget(parser, argv)
    with ProgressReporter() as progress:
        result = measure_quality(ws, cfg, synthetic=args.synthetic, features=args.features, progress=progress)
    if args.json:
        print(json.dumps(json_report(result)))
    else:
        print(format_table(result))
        for path, reason in result["skipped"].items():
            print(f"skipped {path}: {reason}")
    return 0
