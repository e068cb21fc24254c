"""`python -m core <stage> ...`: the CLI over the same functions the app calls."""
from __future__ import annotations

import importlib
import os
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
    root = _workspace_written(argv)
    if root is None:
        return _run(argv)
    from core.errors import WorkspaceBusy
    from core.workspace import writer_lock
    # taken before the stage's modules are imported (seconds of torch/diffusers): a second writer
    # is told at once; the command's own `workspace(args)` re-enters this lock
    try:
        with writer_lock(root, f"python -m core {argv[0]}", wait="--wait" in argv,
                         notify=lambda line: print(line, file=sys.stderr, flush=True)):
            return _run(argv)
    except WorkspaceBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.cli(argv[1:]) or 0)


def _workspace_written(argv: list[str]) -> str | None:
    """The --workspace a writing command names (None for `data check` and `data download`, which
    write none, for ranks > 0 under torchrun, and when the flag is missing or repeated oddly)."""
    if argv[:2] in (["data", "check"], ["data", "download"]) or int(os.environ.get("RANK", "0")) != 0:
        return None
    for i, arg in enumerate(argv):
        if arg == "--workspace" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
