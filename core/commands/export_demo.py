"""`python -m core export-demo`: bundle a finished demo run (core.protocol.demo_models), or install one."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import add_common, guarded, workspace
from core.protocol.demo_models import export_demo, install_demo
from core.errors import UserError


@guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core export-demo",
                                     description="bundle a finished demo run, or install a bundle")
    add_common(parser)
    parser.add_argument("--to", type=Path, default=None, help="bundle folder to write")
    parser.add_argument("--no-images", action="store_true", help="leave the synthetic PNGs out")
    parser.add_argument("--install-from", type=Path, default=None,
                        help="install this bundle into --workspace instead of exporting")
    parser.add_argument("--overwrite", action="store_true", help="replace models already in the workspace")
    args = parser.parse_args(argv)
    ws = workspace(args)
    if args.install_from is not None:
        out = install_demo(args.install_from, ws, overwrite=args.overwrite)
        print(f"installed {out['installed']} files ({out['bytes'] / 1e6:.1f} MB) into {ws.root}")
        return 0
    if args.to is None:
        raise UserError("--to is required when exporting (e.g. --to assets/demo_models)")
    info = export_demo(ws, args.to, include_images=not args.no_images)
    print(f"bundle {args.to}: {len(info['files'])} files, {info['bytes'] / 1e6:.1f} MB")
    return 0
