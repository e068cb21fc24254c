"""`python -m core latent-classifier`: train a label budget's noise-aware latent classifier
(core.train.latent_classifier) from the shell."""
from __future__ import annotations


from core.cli import ProgressReporter, guarded
from core.commands import budget_parser, parse_budget
from core.train.latent_classifier import train_latent_classifier


@guarded
def cli(argv: list[str]) -> int:
    parser = budget_parser("python -m core latent-classifier", "train the noise-aware latent classifier")
    args, cfg, ws = parse_budget(parser, argv)

    with ProgressReporter() as progress:
        table = train_latent_classifier(ws, cfg, progress=progress)
    print(table.to_string(index=False))
    print(f"saved to {ws.latent_classifier_dir}")
    return 0
