"""A bounded load check of the served lab, loopback only: N concurrent gradio_client clients for
at most D seconds, half asking for preview sampling, half moving the threshold slider.

python -m benchmarks.app_load [--clients 8] [--seconds 60] [--steps 5]

Reports requests and errors per endpoint, whether the compute slot ever ran two jobs at once,
and the threshold endpoint's latency while a sampling job runs and while the slot is idle.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))     # served, ldm_fixtures

from benchmarks.app_latency import preview_workspace  # noqa: E402
from benchmarks.common import markdown_table  # noqa: E402


class SlotWatch:
    """Counts jobs inside the runner's thread body at once (must never exceed 1)."""

    def __init__(self, runner):
        self.active, self.peak, self.lock = 0, 0, threading.Lock()
        real = runner._run

        def watched(*a, **k):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                return real(*a, **k)
            finally:
                with self.lock:
                    self.active -= 1
        runner._run = watched


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    from gradio_client import Client

    from app import tab_selection
    from app.tab_sampling import class_names
    from served import serve
    ctx, models = preview_workspace(Path(tempfile.mkdtemp()) / "ws")
    watch = SlotWatch(ctx.runner)
    classes = class_names(ctx)
    results: list[dict] = []
    lock = threading.Lock()
    end = time.time() + args.seconds

    def client_loop(i: int, url: str) -> None:
        client = Client(url, verbose=False, download_files=False)
        n = 0
        while time.time() < end:
            n += 1
            sampling = i % 2 == 0
            t = time.perf_counter()
            busy = ctx.runner.is_running()
            try:
                if sampling:
                    client.predict(classes[n % len(classes)], 3.0, args.steps, 1.0, 1000 * i + n, 2, 2,
                                   api_name="/sample")
                else:
                    client.predict((n % 19 + 1) / 20, "threshold", 0, "accepted", tab_selection.ALL, 8,
                                   api_name="/refilter")
                error = ""
            except Exception as e:  # noqa: BLE001 - every failure is counted and named
                error = f"{type(e).__name__}: {str(e)[:80]}"
            with lock:
                results.append({"endpoint": "/sample" if sampling else "/refilter", "s": time.perf_counter() - t,
                                "error": error, "while_sampling": busy and ctx.runner.is_running()})

    with serve(ctx) as (_, url):
        threads = [threading.Thread(target=client_loop, args=(i, url)) for i in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(args.seconds + 120)
    rows = []
    for endpoint in ("/sample", "/refilter"):
        mine = [r for r in results if r["endpoint"] == endpoint]
        errors = Counter(r["error"] for r in mine if r["error"])
        rows.append({"endpoint": endpoint, "requests": len(mine), "errors": sum(errors.values()),
                     "median_s": statistics.median([r["s"] for r in mine]) if mine else float("nan"),
                     "max_s": max((r["s"] for r in mine), default=float("nan")),
                     "error_kinds": "; ".join(f"{k} x{v}" for k, v in errors.items()) or "-"})
    for label, flag in (("/refilter while sampling runs", True), ("/refilter while the slot is idle", False)):
        lat = sorted(r["s"] for r in results if r["endpoint"] == "/refilter" and r["while_sampling"] is flag
                     and not r["error"])
        if lat:
            rows.append({"endpoint": label, "requests": len(lat), "errors": 0,
                         "median_s": statistics.median(lat), "max_s": lat[-1],
                         "error_kinds": f"p95 {lat[int(0.95 * (len(lat) - 1))]:.3g} s"})
    print(f"{args.clients} clients, {args.seconds:.0f} s, {models}, preview {args.steps} steps x 2 images")
    print(markdown_table(rows))
    print(f"compute slot: at most {watch.peak} job(s) at once (double-booked: {'YES' if watch.peak > 1 else 'no'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
