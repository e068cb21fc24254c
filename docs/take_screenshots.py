"""Screenshots of each tab for the README: `python docs/take_screenshots.py --workspace W`.

Starts the lab in-process on a free port and drives Debian's chromium through Playwright.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABS = ["1 · Pre-training", "2 · Guidance-scale sampling", "3 · Confidence threshold",
        "4 · Augmentation vs baseline"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, default=ROOT / "workspaces" / "demo")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--sample", action="store_true", help="generate 4 images before the sampling shot")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    import runpy
    from app import create_app, launch_kwargs
    from app.context import AppContext
    ctx = AppContext.create(args.workspace)
    # as `make run` does: the bundled demo goes into an empty workspace (app.py's own function)
    print(*runpy.run_path(str(ROOT / "app.py"))["prepare_workspace"](ctx), sep="\n")
    demo = create_app(ctx)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                quiet=True, **launch_kwargs(ctx))
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(demo.local_url)
            page.get_by_text("HistoDiffusion Lab").first.wait_for()
            for i, title in enumerate(TABS, 1):
                page.get_by_role("tab", name=title).click()
                if i == 2 and args.sample:
                    page.locator("#generate-btn").click()
                    page.locator("#sampling-status").get_by_text("done").wait_for()
                page.wait_for_timeout(3000)
                path = args.out / f"tab{i}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path)
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main()
