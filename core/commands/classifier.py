"""`python -m core classifier`: train a label budget's noise-aware latent classifier
(core.latent_classifier) from the shell."""
from __future__ import annotations

import argparse

from core.cli import ProgressReporter, add_common, guarded, resolve_config, workspace
from core.commands import add_budget, budget_view
from core.latent_classifier import train_latent_classifier


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core classifier",
                                     description="train the noise-aware latent classifier")
    add_common(parser)
    add_budget(parser)
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    ws = budget_view(workspace(args), cfg, args.budget)

    with ProgressReporter() as progress:
        table = train_latent_classifier(ws, cfg, progress=progress)
    print(table.to_string(index=False))
    print(f"saved to {ws.latent_classifier_dir}")
    return 0
