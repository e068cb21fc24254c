"""`python -m core filter-classifier`: train a label budget's filter classifier from the shell."""
from __future__ import annotations

import json

from core.train.filter_classifier import train_filter_classifier
from core.cli import ProgressReporter, guarded
from core.commands import budget_parser, parse_budget


@guarded
def cli(argv: list[str]) -> int:
    parser = budget_parser("python -m core filter-classifier",
                           "train the filter classifier on the label budget's train images")
    args, cfg, ws = parse_budget(parser, argv)
    with ProgressReporter() as progress:
        out = train_filter_classifier(ws, cfg, progress=progress)
    print(json.dumps({k: v for k, v in out.items() if k != "skipped"}, default=str))
    for path, reason in out.get("skipped", {}).items():
        print(f"skipped {path}: {reason}")
    return 0
