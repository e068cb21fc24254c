"""`python -m core <stage>`: one module per stage, each exposing `cli(argv) -> int`.

These are the only modules that import `core.cli` (argument parsing, exit codes); the stage
modules hold the work and stay free of it, so the app and other stages import them plainly.
"""
from __future__ import annotations

import argparse

from core.data.budget import budget_name, budget_views
from core.cli import add_common, resolve_config, workspace
from core.config.lab_config import LabConfig
from core.errors import UserError
from core.workspace import Workspace


def add_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", default=None, metavar="NAME",
                        help="label budget to act on, as core names its folder: f0.25 (a quarter of "
                             "the labels), n20 (20 per class); default: the config's first")


def budget_view(ws: Workspace, cfg: LabConfig, name: str | None) -> Workspace:
    """The workspace view of budget `name` (None: the first, which lives at the root)."""
    views = [(budget_name(value), view) for value, view in budget_views(ws, cfg)]
    if name is None:
        return views[0][1]
    for known, view in views:
        if known == name:
            return view
    raise UserError(f"--budget {name}: no such label budget; this config's budgets are "
                    f"{', '.join(known for known, _ in views)} (experiment.label_fractions)")


def budget_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command that acts on one label budget: --workspace/--preset/--set, --budget."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common(parser)
    add_budget(parser)
    return parser


def parse_budget(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, LabConfig, Workspace]:
    """(arguments, the resolved config, the workspace view of the asked budget)."""
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    return args, cfg, budget_view(workspace(args), cfg, args.budget)
