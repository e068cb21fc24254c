"""One compute slot shared by every caller (the app's tabs): run a long stage in a thread.

Written by hand because the stack has no job runner that (a) holds exactly one slot across
unrelated UI events, (b) stops a running loop cooperatively, and (c) keeps its status on the
server so a page reload sees it. Gradio's queue and `cancels` cannot stop a function that is
already running; the core loops instead check the `stop` event this runner hands them.

A job function is called as `fn(progress=callback, stop=event, **kwargs)`. The callback takes
the dicts the core loops emit (`{"stage", "step", "total", ...}`); the job ends as
- "done": fn returned (a return value of `{"stopped": True}` counts as "stopped"),
- "stopped": stop was requested and fn returned or raised `JobStopped`,
- "failed": fn raised; the status keeps the message and the traceback's tail.
"""
from __future__ import annotations

import contextlib
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from core.errors import WorkspaceBusy
from core.io import describe_write_error
from core.workspace import writer_lock

STATES = ("idle", "running", "done", "failed", "stopped")
TRACEBACK_TAIL_LINES = 12


class JobBusy(RuntimeError):
    """The compute slot is taken; the message names the running job."""


class JobStopped(Exception):
    """Raised from inside a job (e.g. by a progress callback) to end it as 'stopped'."""


class JobRunner:
    def __init__(self, before_job: Callable[[], None] | None = None, workspace: str | Path | None = None) -> None:
        """`before_job` runs in the job's thread before each job (e.g. to reset per-run globals);
        an exception there fails the job like any other. With `workspace`, a job (and `hold`)
        also holds that workspace's writer lock (core.workspace.writer_lock), so no other process
        (a `python -m core run`, another lab) writes there while it runs."""
        self._before_job = before_job
        self._workspace = workspace
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._status: dict[str, Any] = self._blank("", "idle")
        self._result: Any = None
        self._job_id = 0
        self._held: str | None = None     # a short synchronous action holding the slot (hold())

    @staticmethod
    def _blank(name: str, state: str) -> dict[str, Any]:
        return {"job_id": 0, "name": name, "state": state, "progress": 0.0, "step": 0, "total": 0,
                "message": "", "error": "", "traceback": "", "started": None, "finished": None,
                "last": {}}

    # -- control ----------------------------------------------------------------------------
    def start(self, name: str, fn: Callable[..., Any], *, setup: Callable[[], Any] | None = None,
              wait_if_stopping: float = 0.0, **kwargs: Any) -> int:
        """Run `fn(progress=..., stop=..., **kwargs)` in a thread; returns the job id.

        Raises JobBusy while another job holds the slot. `setup()` runs after the slot is taken
        and before the job starts (a destructive step such as archiving a previous run must never
        touch files a running job still writes); if it raises, the slot stays free.
        A job already asked to stop is waited for up to `wait_if_stopping` seconds (it ends
        within a step), so a request right after a cancel or a client disconnect queues behind
        it instead of being refused.
        """
        thread = self._thread
        if wait_if_stopping > 0 and thread is not None and self._stop.is_set():
            thread.join(wait_if_stopping)
        with self._lock:
            self._refuse_if_busy()
            held = self._writer_lock(name)
            try:
                if setup is not None:
                    setup()
            except BaseException:
                held.close()
                raise
            self._job_id += 1
            self._stop = threading.Event()
            self._result = None
            self._status = self._blank(name, "running")
            self._status.update(job_id=self._job_id, started=time.time(), message="starting")
            stop = self._stop
            job_id = self._job_id
            self._thread = threading.Thread(target=self._run, args=(job_id, fn, stop, kwargs, held),
                                            name=f"job-{name}", daemon=True)
            self._thread.start()
        return job_id

    @contextlib.contextmanager
    def hold(self, name: str):
        """Hold the slot for a short synchronous action (e.g. replacing the exported accepted set,
        which a job may be reading): JobBusy while a job runs, and no job starts until it ends."""
        with self._lock:
            self._refuse_if_busy()
            held = self._writer_lock(name)
            self._held = name
        try:
            yield
        finally:
            with self._lock:
                self._held = None
            held.close()

    def _writer_lock(self, name: str) -> contextlib.ExitStack:
        """The workspace's writer lock for job `name`, in a stack the job closes when it ends."""
        stack = contextlib.ExitStack()
        if self._workspace is not None:
            try:
                stack.enter_context(writer_lock(self._workspace, f"lab: {name}"))
            except WorkspaceBusy as e:
                raise JobBusy(str(e)) from None
        return stack

    def _refuse_if_busy(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise JobBusy(f"'{self._status['name']}' is running; stop it or wait for it to finish")
        if self._held is not None:
            raise JobBusy(f"'{self._held}' is running; wait for it to finish")

    def stop(self) -> bool:
        """Ask the running job to stop at its next step; False when nothing is running."""
        with self._lock:
            if not self.is_running():
                return False
            self._stop.set()
            self._status["message"] = "stopping after the current step"
        return True

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    # -- state ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._status)
        if out["started"] is not None:
            end = out["finished"] or time.time()
            out["elapsed_s"] = round(end - out["started"], 2)
        return out

    def result(self) -> Any:
        """The last finished job's return value (None while running or after a failure)."""
        return self._result

    # -- internals --------------------------------------------------------------------------
    def _progress(self, job_id: int, stop: threading.Event) -> Callable[[dict], None]:
        def report(update: dict | None = None, **fields: Any) -> None:
            info = dict(update or {}, **fields)
            with self._lock:
                if job_id != self._job_id:
                    return
                status = self._status
                step, total = info.get("step"), info.get("total")
                if isinstance(step, (int, float)):
                    status["step"] = step
                if isinstance(total, (int, float)) and total > 0:
                    status["total"] = total
                    status["progress"] = max(0.0, min(1.0, float(status["step"]) / float(total)))
                if "progress" in info and isinstance(info["progress"], (int, float)):
                    status["progress"] = max(0.0, min(1.0, float(info["progress"])))
                if not stop.is_set():
                    status["message"] = str(info.get("message") or _describe(info))
                status["last"] = {k: v for k, v in info.items() if _plain(v)}
        return report

    def _run(self, job_id: int, fn: Callable[..., Any], stop: threading.Event,
             kwargs: dict[str, Any], held: contextlib.ExitStack) -> None:
        state, error, tb, result = "done", "", "", None
        try:
            if self._before_job is not None:
                self._before_job()
            result = fn(progress=self._progress(job_id, stop), stop=stop, **kwargs)
            stopped_flag = isinstance(result, dict) and bool(result.get("stopped"))
            if stop.is_set() or stopped_flag:
                state = "stopped"
        except JobStopped:
            state = "stopped"
        except BaseException as e:  # noqa: BLE001 - a job must never take the server down
            state = "failed"
            error = describe_write_error(e) or ""
            if not error:           # a full disk is not a bug: one line, no traceback
                error = f"{type(e).__name__}: {e}"
                lines = traceback.format_exc().rstrip().splitlines()
                tb = "\n".join(lines[-TRACEBACK_TAIL_LINES:])
        with self._lock:
            self._result = result if state != "failed" else None
            self._status.update(state=state, error=error, traceback=tb, finished=time.time())
            if state == "done":
                self._status.update(progress=1.0, message="finished")
            elif state == "stopped":
                self._status["message"] = f"stopped at step {self._status['step']}"
            else:
                self._status["message"] = f"failed: {error}"
        held.close()


def _describe(info: dict) -> str:
    stage = info.get("stage", "")
    step, total = info.get("step"), info.get("total")
    text = f"{stage} step {step}/{total}" if total else (f"{stage} step {step}" if step is not None else stage)
    if isinstance(info.get("loss"), (int, float)):
        text += f" · loss {info['loss']:.4f}"
    return text.strip()


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None
