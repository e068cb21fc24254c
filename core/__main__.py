"""`python -m core <stage> ...`: the CLI over the same functions the app calls."""
from __future__ import annotations

import importlib
import sys

# stage name -> its CLI module (core/commands/), exposing `cli(argv: list[str]) -> int`
STAGES = {
    "data": "core.commands.data",
    "autoencoder": "core.commands.autoencoder",
    "pretrain": "core.commands.pretrain",
    "latent-classifier": "core.commands.latent_classifier",
    "filter-classifier": "core.commands.filter_classifier",
    "sample": "core.commands.sample",
    "select": "core.commands.select",
    "run": "core.commands.run",
    "evaluate": "core.commands.evaluate",
    "tune-guidance": "core.commands.tune_guidance",
    "export-demo": "core.commands.export_demo",
}


# names before one term per concept (docs/architecture.md, glossary): still run, with one line
RENAMED = {"classifier": "latent-classifier", "classify": "filter-classifier", "filter": "select"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RENAMED:
        print(f"`python -m core {argv[0]}` is now `python -m core {RENAMED[argv[0]]}`", file=sys.stderr)
        argv[0] = RENAMED[argv[0]]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        names = ", ".join(STAGES)
        print(f"usage: python -m core <stage> [options]\nstages: {names}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.cli(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
