"""What every tab shares: the workspace, the data roots, the config, the one JobRunner, and the
path sandbox (a path typed into the UI resolves only inside the workspace or a --data-root)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.checks import apply_overrides
from core.config.presets import config_for
from core.protocol.jobs import JobRunner
from core.workspace import Workspace

COMPUTE = "compute"      # the one Gradio concurrency id shared by every compute event
MAX_PATH_CHARS, MAX_NAME_BYTES = 4096, 255     # Linux PATH_MAX / NAME_MAX


@dataclass
class AppContext:
    workspace: Workspace
    config: LabConfig
    data_roots: tuple[Path, ...] = ()
    runner: JobRunner = field(default_factory=JobRunner)

    @classmethod
    def create(cls, workspace: str | Path, data_roots: list[str | Path] | tuple = (),
               preset_name: str | None = None, overrides: list[str] | tuple = (),
               runner: JobRunner | None = None) -> "AppContext":
        ws = Workspace(workspace).ensure()
        roots = []
        for root in data_roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise UserError(f"--data-root {root} is not a folder")
            roots.append(path)
        return cls(workspace=ws, config=config_for(ws, preset_name, overrides),
                   data_roots=tuple(roots), runner=runner or JobRunner(workspace=ws.root))

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        return (self.workspace.root, *self.data_roots)

    def resolve_path(self, text: str, *, must_exist: bool = True, field_name: str = "path") -> Path:
        """Resolve a user-typed path; relative paths are taken from the workspace.

        Symlinks and `..` are resolved first, so neither can step outside the allowed roots.
        """
        text = (text or "").strip()
        if not text:
            raise UserError(f"{field_name} is empty")
        if "\0" in text:
            raise UserError(f"{field_name} contains a NUL byte")
        longest = max(len(part.encode()) for part in Path(text).parts)
        if len(text) > MAX_PATH_CHARS or longest > MAX_NAME_BYTES:
            raise UserError(f"{field_name} is too long ({len(text)} characters, longest name "
                            f"{longest} bytes; at most {MAX_PATH_CHARS} and {MAX_NAME_BYTES})")
        raw = Path(text).expanduser()
        try:
            path = (raw if raw.is_absolute() else self.workspace.root / raw).resolve()
        except (OSError, RuntimeError) as e:         # symlink loops, unreadable parents
            raise UserError(f"{field_name} {text!r} cannot be resolved: {e}") from e
        if not any(path == root or path.is_relative_to(root) for root in self.allowed_roots):
            roots = ", ".join(str(r) for r in self.allowed_roots)
            raise UserError(f"{field_name} {text!r} is outside the workspace and the data roots "
                            f"({roots}); start the app with --data-root to allow another folder")
        if must_exist and not path.exists():
            raise UserError(f"{field_name} {text!r} does not exist ({path})")
        return path

    def with_overrides(self, section: str, values: dict[str, Any]) -> LabConfig:
        """The config with one section's fields replaced BY NAME, typed and validated as `--set`
        values are (ConfigError naming the field)."""
        return apply_overrides(self.config, {f"{section}.{name}": v for name, v in values.items()})


def job_markdown(status: dict[str, Any]) -> str:
    """The shared compute slot's state as markdown (a failure shows its traceback tail)."""
    name, state = status.get("name", ""), status.get("state", "idle")
    if state == "idle":
        return "Compute slot: idle."
    pct = f"{100 * float(status.get('progress') or 0):.0f}%"
    text = f"**{name}** — {state} · {pct} · {status.get('message', '')}"
    if status.get("elapsed_s") is not None:
        text += f" · {status['elapsed_s']:.0f} s"
    if state == "failed":
        text += f"\n\n**Error:** `{status.get('error', '')}`"
        if status.get("traceback"):          # none for a full disk / read-only workspace: one line
            text += f"\n\n```\n{status['traceback']}\n```"
    return text


def stop_job(ctx: AppContext, names: tuple[str, ...]) -> str:
    """A tab's Stop button: stops the running job only when it is one of this tab's jobs."""
    status = ctx.runner.status()
    if status["state"] != "running":
        return "nothing is running"
    if status["name"] not in names:
        return f"'{status['name']}' is running (started from another tab); stop it there"
    ctx.runner.stop()
    return f"stop requested: '{status['name']}' ends after its current step"


def progress_html(status: dict[str, Any]) -> str:
    """A plain HTML progress bar (Gradio's own bar only exists while an event is running)."""
    value = 100 * float(status.get("progress") or 0)
    return (f'<div class="job-progress"><progress max="100" value="{value:.1f}" '
            f'style="width:100%"></progress> <span>{value:.0f}%</span></div>')


class FileCache:
    """Values read from files, kept until the file changes (its mtime and size): the tables a tab
    re-reads on every slider move. Safe across the server's threads; a module holds one."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int], Any]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, read: Callable[[Path], Any]) -> Any:
        """`read(path)`, or what it returned for this very version of the file."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._entries.get(str(path))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = read(path)
        with self._lock:
            self._entries[str(path)] = (stamp, value)
        return value


class SessionValues:
    """A setting each browser session (or gradio_client) keeps on the server, for a value that is
    not a parameter of the endpoints that use it; sessions that never set it get `default`."""

    MAX_SESSIONS = 1000

    def __init__(self, default: Any) -> None:
        self.default, self._values, self._lock = default, {}, threading.Lock()

    def get(self, request: Any) -> Any:
        with self._lock:
            return self._values.get(getattr(request, "session_hash", None), self.default)

    def set(self, request: Any, value: Any) -> None:
        with self._lock:
            if len(self._values) >= self.MAX_SESSIONS:      # the oldest session's value goes
                self._values.pop(next(iter(self._values)))
            self._values[getattr(request, "session_hash", None)] = value
