"""`python -m core run`: every stage, top-up and the protocol grid (core.protocol.experiment), with a
progress bar (or sparse lines in a log) and the summary table at the end."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.errors import UserError
from core.protocol.experiment import run_all
from core.evaluate.summary_tables import markdown_table


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core run",
                                     description="data -> models -> synthetic set -> baseline vs augmented")
    add_common(parser)
    parser.add_argument("--labeled", type=Path, default=None,
                        help="labeled ImageFolder or PathMNIST .npz (default: what the workspace was made "
                             "from; the bundled demo for a new one)")
    parser.add_argument("--test", type=Path, default=None, help="separate test ImageFolder")
    parser.add_argument("--unlabeled", type=Path, nargs="+", default=[], help="unlabeled folders / slides")
    parser.add_argument("--switch-data", action="store_true",
                        help="run a workspace that has models on other data: its models, synthetic sets and "
                             "results move to WORKSPACE/archive/ first (default: the workspace's own data)")
    args = parser.parse_args(argv)
    if args.test is not None and args.labeled is None:
        raise UserError("--test needs --labeled (the demo brings its own test split)")
    cfg, ws = resolve_config(args), workspace(args)
    with ProgressReporter() as progress:
        out = run_all(ws, cfg, args.labeled, args.test, args.unlabeled, progress=progress, notify=progress.write,
                      switch_data=args.switch_data)
    if out.get("stopped"):
        print(f"stopped during {out['stage']}; rerun the same command to resume", file=sys.stderr)
        return 130
    print(markdown_table(out))
    for name, b in out["budgets"].items():
        print(f"budget {name}: " + ", ".join(f"{c} {v['accepted']}/{v['generated']} accepted"
                                              for c, v in b["topup"].items()))
    print(f"results in {ws.results_dir}")
    return 0
