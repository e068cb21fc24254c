"""`python -m core <stage> ...`: the CLI over the same functions the app calls."""
from __future__ import annotations

import importlib
import sys

# stage name -> its CLI module (core/commands/), exposing `cli(argv: list[str]) -> int`
STAGES = {
    "data": "core.commands.data",
    "autoencoder": "core.commands.autoencoder",
    "pretrain": "core.commands.pretrain",
    "classifier": "core.commands.classifier",
    "sample": "core.commands.sample",
    "filter": "core.commands.filter",
    "classify": "core.commands.classify",
    "run": "core.commands.run",
    "evaluate": "core.commands.evaluate",
    "tune-guidance": "core.commands.tune_guidance",
    "export-demo": "core.commands.export_demo",
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
