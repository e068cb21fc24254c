"""Launch the lab in-process on a free port (shared by the gradio_client and browser tests)."""
from __future__ import annotations

import socket
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(ctx):
    from app import create_app, launch_kwargs
    demo = create_app(ctx)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                quiet=True, **launch_kwargs(ctx))
    try:
        yield demo, demo.local_url
    finally:
        ctx.runner.stop()
        ctx.runner.wait(30)
        demo.close()
