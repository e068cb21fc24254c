"""`python -m core classify`: train a label budget's filter classifier (core.classify) from the shell."""
from __future__ import annotations

import argparse
import json

from core.classify import train_filter_classifier
from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.commands import add_budget, budget_view


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core classify",
                                     description="train the filter classifier on the label budget's train images")
    add_common(parser)
    add_budget(parser)
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    ws = budget_view(workspace(args), cfg, args.budget)
    with ProgressReporter() as progress:
        out = train_filter_classifier(ws, cfg, progress=progress)
    print(json.dumps({k: v for k, v in out.items() if k != "skipped"}, default=str))
    for path, reason in out.get("skipped", {}).items():
        print(f"skipped {path}: {reason}")
    return 0
