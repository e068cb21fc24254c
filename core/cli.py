"""Shared CLI plumbing: --workspace, --preset, --set key=value, clean error exits, progress."""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from tqdm import tqdm

from core.config.lab_config import LabConfig
from core.config.presets import config_for
from core.errors import ConfigError, UserError
from core.io import describe_write_error
from core.workspace import Workspace, writer_lock

# what the running command holds until it returns (its workspace's writer lock): `guarded` opens
# one stack per command, `workspace(args)` enters the lock into it
_HELD: list[tuple[str, contextlib.ExitStack]] = []


def add_common(parser: argparse.ArgumentParser, workspace_required: bool = True) -> None:
    parser.add_argument("--workspace", required=workspace_required, type=Path,
                        help="workspace folder holding data, models and results")
    parser.add_argument("--preset", default=None,
                        help="tiny | demo | paper (default: the workspace's config, else demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set pretrain.steps=100 (repeatable)")
    parser.add_argument("--wait", action="store_true",
                        help="when another command writes to the workspace, wait for it instead of exiting")


def resolve_config(args: argparse.Namespace) -> LabConfig:
    """--preset given -> that preset; else the workspace's saved config.json; else demo. Then --set."""
    return config_for(getattr(args, "workspace", None), args.preset, args.overrides)


def workspace(args: argparse.Namespace) -> Workspace:
    """The command's workspace, with its writer lock held until the command returns: a second
    writer exits at once ("workspace busy: pid N, `command`") or, with --wait, waits. Under
    torchrun the ranks are one command: rank 0 holds the lock for them."""
    ws = Workspace(args.workspace).ensure()
    if _HELD and int(os.environ.get("RANK", "0")) == 0:
        command, stack = _HELD[-1]
        stack.enter_context(writer_lock(ws.root, command, wait=getattr(args, "wait", False),
                                        notify=lambda line: print(line, file=sys.stderr, flush=True)))
    return ws


def guarded(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
    """Turn user errors into a one-line message and exit 2; a full disk or read-only workspace
    into one line naming the path and exit 1; Ctrl-C into exit 130."""
    command = "python -m core " + fn.__module__.rsplit(".", 1)[-1].replace("_", "-")

    @functools.wraps(fn)
    def wrapper(argv: list[str]) -> int:
        try:
            with contextlib.ExitStack() as stack:
                _HELD.append((command, stack))
                try:
                    return fn(argv)
                finally:
                    _HELD.pop()
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


class ProgressReporter:
    """The stage CLIs' `progress(dict)` callback (keys stage, step, total; other scalars are shown
    beside them). On a terminal: one tqdm bar per stage, with rate and ETA. Elsewhere (a log, a
    pipe): the same text as plain lines, at most one per tenth of the stage or per `every_s`
    seconds, plus the stage's last. A new stage closes the previous bar; so does a stage starting
    over (the step going back, a new total), which sampling does once per class.

    Use as a context manager so the last bar is closed (and the last plain line written)."""

    SHOWN_ELSEWHERE = {"stage", "step", "total", "unit", "message", "pipeline_step", "pipeline_total"}

    def __init__(self, stream: TextIO | None = None, every_s: float = 30.0, tty: bool | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every_s = every_s
        self.quiet = int(os.environ.get("RANK", "0")) != 0      # under torchrun only rank 0 reports
        self.stage: str | None = None
        self.bar: tqdm | None = None
        self.last: tuple[int, int, str] | None = None           # (step, total, postfix) of the stage
        self.t0 = self.printed_at = 0.0
        self.printed_step, self.next_mark = -1, 0.0
        self.unit: dict = {}                                    # bytes: "unit": "B" in the event

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, p: dict) -> None:
        if self.quiet:
            return
        stage, step, total = str(p.get("stage") or ""), int(p.get("step") or 0), int(p.get("total") or 0)
        if not step and not total:              # a stage announced before it reports steps
            self.close()
            where = f" (stage {p['pipeline_step'] + 1} of {p['pipeline_total']})" if "pipeline_total" in p else ""
            self.write(f"[{stage}] started{where}")
            return
        if stage != self.stage or self._restarted(step, total):
            self.close()
            self.stage, self.t0, self.printed_at = stage, time.monotonic(), time.monotonic()
            self.printed_step, self.next_mark = -1, 0.0
            self.unit = dict(unit=p["unit"], unit_scale=True, unit_divisor=1024) if "unit" in p else {}
            if self.tty:
                self.bar = tqdm(total=total or None, desc=stage, file=self.stream, mininterval=0.5, **self.unit)
        postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()
                            if k not in self.SHOWN_ELSEWHERE and isinstance(v, (int, float, str)))
        self.last = (step, total, postfix)
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.monotonic()
        fraction = step / total if total else 0.0
        if (total and fraction >= self.next_mark) or now - self.printed_at >= self.every_s or \
                (total and step >= total) or (not total and self.printed_step < 0):
            self._line()
            self.next_mark = (math.floor(fraction * 10) + 1) / 10

    def _restarted(self, step: int, total: int) -> bool:
        if self.last is None:
            return False
        last_step, last_total, _ = self.last
        return step < last_step or total != last_total or (step == last_step and 0 < last_total <= step)

    def _line(self) -> None:
        step, total, postfix = self.last
        print(tqdm.format_meter(step, total or None, time.monotonic() - self.t0, ncols=0, prefix=self.stage,
                                postfix=postfix or None, **self.unit), file=self.stream, flush=True)
        self.printed_at, self.printed_step = time.monotonic(), step

    def write(self, line: str) -> None:
        """A message that must not tear a bar in half (tqdm.write redraws the bar below it)."""
        if self.bar is not None:
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """End the current stage: close its bar, or write its last line if not yet written."""
        if self.bar is not None:
            self.bar.close()
        elif self.last is not None and self.last[0] != self.printed_step:
            self._line()
        self.bar, self.last, self.stage = None, None, None
