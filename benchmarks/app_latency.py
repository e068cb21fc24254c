"""Lab latency: page ready after launch, a 4-image preview at the default steps, a threshold
slider update over 1,000 stored scores (handler and full HTTP round trip), and a short request
right after a client dropped a long one (beside the same request on an idle slot).

python -m benchmarks.app_latency [--workspace DIR] [--skip-page]

The preview uses the bundled demo models when assets/demo_models exists; otherwise untrained
models of the demo preset's shapes (the same compute per step), and the table says which.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))     # served, ldm_fixtures

from benchmarks.common import markdown_table  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def page_ready(workspace: Path) -> dict:
    """Seconds from `python app.py` to the server answering, and to the page showing its tabs."""
    from served import free_port
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--workspace", str(workspace),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        http_s = None
        while time.perf_counter() - start < 120:
            try:
                urllib.request.urlopen(url, timeout=1)
                http_s = time.perf_counter() - start
                break
            except OSError:
                time.sleep(0.1)
        page_s = None
        if http_s is not None and os.path.exists(CHROMIUM):
            from playwright.sync_api import sync_playwright
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                page = browser.new_page()
                page.goto(url)
                page.get_by_role("tab", name="4 · Augmentation vs baseline").wait_for(timeout=60_000)
                page_s = time.perf_counter() - start
                browser.close()
        return {"http_s": http_s, "page_s": page_s}
    finally:
        proc.terminate()
        proc.wait(30)


def preview_workspace(root: Path):
    """A demo-preset workspace with models (bundled if present, else untrained of the same shape)."""
    from app.context import AppContext
    from core.config.store import save_config
    from core.config.presets import preset
    from core.data.tables import load_splits
    bundle = ROOT / "assets" / "demo_models"
    if bundle.exists():
        from core.protocol.demo_models import install_demo
        from core.workspace import Workspace
        install_demo(bundle, Workspace(root).ensure())
        return AppContext.create(root), "bundled demo models"
    from ldm_fixtures import lay_untrained_models
    from core.data.demo import build_demo
    ctx = AppContext.create(root, preset_name="demo")
    build_demo(ctx.workspace, ctx.config)
    save_config(ctx.config, ctx.workspace.root)
    lay_untrained_models(ctx.workspace, preset("demo"), load_splits(ctx.workspace)[1])
    return ctx, "untrained demo-shape models (no assets/demo_models)"


def preview_time(ctx, repeats: int = 3) -> dict:
    from app.sampling_jobs import class_names, sample_into_gallery
    from core.generate.requests import SamplingRequest as Request
    s = ctx.config.sampling
    req = Request(class_names(ctx)[0], s.guidance_scale, s.steps, s.eta, seed=0, num_images=4, batch_size=4)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        first_preview = None
        for _, preview, _ in sample_into_gallery(ctx, Request(**{**req.__dict__, "seed": i})):
            if preview is not None and first_preview is None:
                first_preview = time.perf_counter() - t
        times.append((time.perf_counter() - t, first_preview))
    warm = [t for t, _ in times[1:]]
    return {"steps": s.steps, "cold_s": times[0][0], "warm_median_s": statistics.median(warm),
            "first_preview_s": statistics.median(p for _, p in times[1:] if p is not None)}


def threshold_time(ctx, rows: int = 1000) -> dict:
    """1,000 stored scores over real PNG files; handler time and HTTP round trip per slider move."""
    from app import tab_selection
    from gradio_client import Client
    from PIL import Image
    from served import serve
    ws = ctx.workspace
    classes = [f"class{i}" for i in range(9)]
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    files = []
    for i in range(rows):
        rel = f"{classes[i % 9]}/img{i:04d}.png"
        (ws.synthetic_dir / classes[i % 9]).mkdir(parents=True, exist_ok=True)
        src.save(ws.synthetic_dir / rel)
        files.append(rel)
    pd.DataFrame({"file": files, "class": [classes[i % 9] for i in range(rows)],
                  "confidence": rng.random(rows), "nearest_class": [classes[i % 9] for i in range(rows)],
                  "centroid_distance": rng.random(rows), "error": ""}).to_csv(ws.synthetic_dir / "scores.csv",
                                                                            index=False)
    positions = np.round(np.linspace(0.05, 0.95, 19), 2)
    tab_selection.refilter(ctx, 0.5, "threshold", 0)                   # first read + figure build
    handler = []
    for t in positions:
        t0 = time.perf_counter()
        tab_selection.refilter(ctx, float(t), "threshold", 0, "accepted", tab_selection.ALL, 8)
        handler.append(time.perf_counter() - t0)
    with serve(ctx) as (_, url):
        client = Client(url, verbose=False, download_files=False)
        client.predict(0.5, "threshold", 0, "accepted", tab_selection.ALL, 8, api_name="/refilter")
        http = []
        for t in positions:
            t0 = time.perf_counter()
            client.predict(float(t), "threshold", 0, "accepted", tab_selection.ALL, 8, api_name="/refilter")
            http.append(time.perf_counter() - t0)
    return {"rows": rows, "handler_median_s": statistics.median(handler), "handler_max_s": max(handler),
            "http_median_s": statistics.median(http), "http_max_s": max(http)}


def after_disconnect_time(ctx, repeats: int = 3) -> dict:
    """A 1-image /sample request on an idle slot, side by side with the same request sent right
    after a client dropped a long one mid-stream (it waits while the dropped job stops). The tests
    check that it is answered and that the dropped job stopped short; this says how long it took."""
    import uuid

    import httpx
    from gradio_client import Client

    from app.tab_sampling import class_names
    from served import serve
    short = dict(class_name=class_names(ctx)[0], guidance_scale=2.0, steps=2, eta=1.0, seed=5, num_images=1,
                 batch_size=1)
    long = {**short, "steps": 200, "num_images": 64, "seed": 1000}
    with serve(ctx) as (_, url):
        client = Client(url, verbose=False, download_files=False)
        base = client.src.rstrip("/")
        fn_index = next(i for i, d in enumerate(client.config["dependencies"]) if d.get("api_name") == "sample")
        client.predict(**short, api_name="/sample")                     # models loaded
        idle, after = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.predict(**short, api_name="/sample")
            idle.append(time.perf_counter() - t0)
            before = ctx.runner.status()["job_id"]
            session = uuid.uuid4().hex
            httpx.post(f"{base}/gradio_api/queue/join", json={
                "data": list(long.values()), "fn_index": fn_index, "session_hash": session,
                "event_data": None, "trigger_id": None}).raise_for_status()
            with httpx.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session},
                              timeout=30) as sse:
                for line in sse.iter_lines():                           # the job streams: drop it
                    if "process_generating" in line:
                        break
            while not (ctx.runner.status()["job_id"] != before and ctx.runner.status()["step"] > 0):
                time.sleep(0.01)
            t0 = time.perf_counter()
            client.predict(**short, api_name="/sample")
            after.append(time.perf_counter() - t0)
    return {"idle_median_s": statistics.median(idle), "after_median_s": statistics.median(after)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspace", type=Path, default=None, help="reuse this workspace for the page test")
    p.add_argument("--skip-page", action="store_true")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="app-latency-"))
    try:
        ctx, models = preview_workspace(tmp / "ws")
        rows = []
        if not args.skip_page:
            ready = page_ready(args.workspace or ctx.workspace.root)
            rows.append({"measure": "page ready after launch (server answers)", "value_s": ready["http_s"],
                         "budget_s": 15})
            rows.append({"measure": "page ready after launch (browser shows the tabs)",
                         "value_s": ready["page_s"], "budget_s": 15})
        print(rows, flush=True)
        prev = preview_time(ctx)
        rows.append({"measure": f"4-image preview, {prev['steps']} steps, cold (loads models)",
                     "value_s": prev["cold_s"], "budget_s": None})
        rows.append({"measure": f"4-image preview, {prev['steps']} steps, warm (median of 3)",
                     "value_s": prev["warm_median_s"], "budget_s": 5})
        rows.append({"measure": "first denoising preview shown (warm)", "value_s": prev["first_preview_s"],
                     "budget_s": None})
        print(rows[-3:], flush=True)
        thr = threshold_time(ctx)
        rows.append({"measure": "threshold update, 1,000 scores: handler (median)",
                     "value_s": thr["handler_median_s"], "budget_s": 0.3})
        rows.append({"measure": "threshold update, 1,000 scores: handler (max)", "value_s": thr["handler_max_s"],
                     "budget_s": 0.3})
        rows.append({"measure": "threshold update, 1,000 scores: HTTP round trip (median)",
                     "value_s": thr["http_median_s"], "budget_s": 0.3})
        drop = after_disconnect_time(ctx)
        ratio = drop["after_median_s"] / drop["idle_median_s"]
        rows.append({"measure": "1-image request, idle slot (median of 3)", "value_s": drop["idle_median_s"],
                     "budget_s": None})
        rows.append({"measure": f"the same right after a client dropped a long request ({ratio:.1f}x idle)",
                     "value_s": drop["after_median_s"], "budget_s": None})
        for r in rows:
            r["value_s"] = None if r["value_s"] is None else round(r["value_s"], 3)
        import torch
        print(f"models: {models}; CPU threads: {torch.get_num_threads()}")
        print(markdown_table(rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
