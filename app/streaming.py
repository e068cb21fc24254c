"""A job in the shared compute slot, streamed to a Gradio generator handler: the job pushes
events on a queue, the handler yields them as they come and ends with the job's final status."""
from __future__ import annotations

import queue
from typing import Any, Iterator

from app.context import AppContext
from core.errors import UserError
from core.protocol.jobs import JobBusy

# Gradio frees a cancelled or disconnected event's queue slot when it closes the handler, which
# only asks the job to stop; the next request waits this long for that step to end.
STOPPING_WAIT_S = 60.0


def stream(ctx: AppContext, name: str, job_fn, **kwargs) -> Iterator[tuple[str, Any]]:
    """Start `job_fn(ctx=, events=, progress=, stop=, **kwargs)` in the shared slot and yield the
    (kind, payload) events it puts on `events` until it ends, then ("end", final status).

    If the consumer goes away (browser closed, client cancelled) the generator is closed and
    the job is asked to stop, so an abandoned request never keeps the slot busy.
    """
    events: queue.Queue = queue.Queue()
    try:
        job_id = ctx.runner.start(name, job_fn, wait_if_stopping=STOPPING_WAIT_S, ctx=ctx, events=events,
                                  **kwargs)
    except JobBusy as e:
        raise UserError(str(e)) from e
    finished = False
    try:
        while True:
            try:
                yield events.get(timeout=0.1)
                continue
            except queue.Empty:
                pass
            status = ctx.runner.status()
            if status["job_id"] != job_id or status["state"] != "running":
                while not events.empty():
                    yield events.get_nowait()
                finished = True
                yield ("end", status)
                return
    finally:
        if not finished and ctx.runner.status().get("job_id") == job_id:
            ctx.runner.stop()
