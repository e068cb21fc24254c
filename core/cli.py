"""Shared CLI plumbing: --workspace, --preset, --set key=value, and clean error exits."""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable

from core.config import LabConfig
from core.presets import resolve
from core.errors import ConfigError, UserError  # noqa: F401  (UserError: the name CLI code has always used)
from core.io import describe_write_error
from core.workspace import Workspace


def add_common(parser: argparse.ArgumentParser, workspace_required: bool = True) -> None:
    parser.add_argument("--workspace", required=workspace_required, type=Path,
                        help="workspace folder holding data, models and results")
    parser.add_argument("--preset", default=None,
                        help="tiny | demo | paper (default: the workspace's config, else demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set pretrain.steps=100 (repeatable)")


def resolve_config(args: argparse.Namespace) -> LabConfig:
    """--preset given -> that preset; else the workspace's saved config.json; else demo. Then --set."""
    return resolve(getattr(args, "workspace", None), args.preset, args.overrides)


def workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(args.workspace).ensure()


def guarded(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
    """Turn user errors into a one-line message and exit 2; a full disk or read-only workspace
    into one line naming the path and exit 1; Ctrl-C into exit 130."""
    @functools.wraps(fn)
    def wrapper(argv: list[str]) -> int:
        try:
            return fn(argv)
        except (UserError, ConfigError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            line = describe_write_error(e)
            if line is None:
                raise
            print(f"error: {line}; what was saved before is intact, rerun when fixed", file=sys.stderr)
            return 1
    return wrapper
