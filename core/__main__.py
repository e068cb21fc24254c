"""`python -m core <stage> ...`: the CLI over the same functions the app calls."""
from __future__ import annotations

import importlib
import sys

# stage name -> module exposing `cli(argv: list[str]) -> int`
STAGES = {
    "data": "core.data_cli",
    "autoencoder": "core.autoencoder",
    "pretrain": "core.pretrain",
    "classifier": "core.latent_classifier",
    "sample": "core.sampling",
    "filter": "core.selection",
    "classify": "core.classify",
    "run": "core.experiment",
    "evaluate": "core.quality",
    "tune-guidance": "core.tune",
    "export-demo": "core.demo_models",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        names = ", ".join(STAGES)
        print(f"usage: python -m core <stage> [options]\nstages: {names}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.cli(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
