"""Login for a lab others can reach: credentials from a file (`--auth-file`) or the environment
(`LAB_AUTH`), which `ps` does not show, and a growing delay after failed logins from one client
(`LoginThrottle`, in front of Gradio's /login), so passwords cannot be tried by the hundred."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Mapping

from core.errors import UserError

ENV = "LAB_AUTH"            # "user:password" (several: separated by newlines)


def credentials(auth: str | None = None, auth_file: str | Path | None = None,
                environ: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """(user, password) pairs from --auth, --auth-file (one "user:password" per line; blank lines
    and # comments skipped) and LAB_AUTH. UserError naming the file and line of a malformed entry
    (never the password)."""
    entries: list[tuple[str, str]] = []
    if auth:
        entries.append(("--auth", auth))
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--auth-file {path}: cannot read it ({e})") from None
        entries += [(f"{path}:{n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
                    if line.strip() and not line.strip().startswith("#")]
        if not entries:
            raise UserError(f"--auth-file {path} holds no user:password line")
    entries += [(ENV, line.strip()) for line in environ.get(ENV, "").splitlines() if line.strip()]
    out = []
    for where, entry in entries:
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise UserError(f"{where}: expected user:password (a user name, a colon, a password)")
        out.append((user.strip(), password))
    return out


class LoginThrottle:
    """ASGI middleware: login attempts from one client are answered one at a time, and after n
    failed ones in a row each next attempt waits `base_s` * 2 ** (n - 1) seconds (at most
    `cap_s`) before it is checked; a successful login, or `forget_s` without an attempt, resets
    the count. Clients are told apart by their address (behind a proxy: the proxy's)."""

    def __init__(self, app, base_s: float = 0.5, cap_s: float = 30.0, forget_s: float = 900.0):
        self.app, self.base_s, self.cap_s, self.forget_s = app, base_s, cap_s, forget_s
        self.failures: dict[str, tuple[int, float]] = {}       # client -> (failures in a row, last attempt)
        self.locks: dict[str, asyncio.Lock] = {}

    def delay(self, client: str) -> float:
        failed, last = self.failures.get(client, (0, 0.0))
        if not failed or time.monotonic() - last > self.forget_s:
            return 0.0
        return min(self.cap_s, self.base_s * 2 ** (failed - 1))

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" \
                or not scope.get("path", "").rstrip("/").endswith("/login"):
            return await self.app(scope, receive, send)
        client = str((scope.get("client") or ("unknown",))[0])
        lock = self.locks.setdefault(client, asyncio.Lock())
        async with lock:
            await asyncio.sleep(self.delay(client))
            answer: dict[str, int] = {}

            async def relay(message):
                if message["type"] == "http.response.start":
                    answer["status"] = message["status"]
                await send(message)
            await self.app(scope, receive, relay)
            failed, _ = self.failures.get(client, (0, 0.0))
            if answer.get("status") == 200:
                self.failures.pop(client, None)
            else:
                self.failures[client] = (failed + 1, time.monotonic())
