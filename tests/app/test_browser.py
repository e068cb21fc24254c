"""The lab in a real browser (Playwright driving Debian's chromium) on a tiny real workspace:
open each tab, move the guidance slider, run a 2-step sample and see the gallery, move the
threshold slider and see the counts change, take a screenshot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from served import serve

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"),
]


@pytest.fixture(scope="module")
def page(lab_workspace):
    from playwright.sync_api import sync_playwright

    from app.context import AppContext
    ctx = AppContext.create(lab_workspace.root)
    with serve(ctx) as (demo, url), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_text("HistoDiffusion Lab").first.wait_for()
        yield page
        browser.close()


def _set_slider(page, elem_id: str, value: float) -> None:
    """Type into the slider's number box and commit, as a user would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()


def test_tabs_sampling_threshold_and_screenshot(page, tmp_path_factory):
    _open_tab(page, "1 · Pre-training")
    page.get_by_text("No pre-training run in this workspace yet").wait_for()

    _open_tab(page, "2 · Guidance-scale sampling")
    _set_slider(page, "guidance-slider", 7.5)
    assert page.locator("#guidance-slider input[type=range]").input_value() == "7.5"
    _set_slider(page, "steps-slider", 2)
    _set_slider(page, "num-images-slider", 2)
    page.locator("#generate-btn").click()
    page.locator("#sampling-status").get_by_text("done").wait_for()
    page.wait_for_function("document.querySelectorAll('#sampling-gallery img').length >= 2")

    _open_tab(page, "3 · Confidence threshold")
    summary = page.locator("#selection-summary")
    summary.get_by_text("accepted").wait_for()
    before = summary.inner_text()
    _set_slider(page, "threshold-slider", 0.9)
    page.wait_for_function("([el, old]) => el.innerText !== old && el.innerText.includes('0.90')",
                           arg=[summary.element_handle(), before])
    assert summary.inner_text() != before

    _open_tab(page, "4 · Augmentation vs baseline")
    page.locator("#results-table").get_by_text("0.710 ± 0.014").first.wait_for()

    shots = Path(os.environ.get("LAB_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screens"))
    shots.mkdir(parents=True, exist_ok=True)
    _open_tab(page, "3 · Confidence threshold")
    page.screenshot(path=str(shots / "threshold-tab.png"), full_page=True)
    _open_tab(page, "2 · Guidance-scale sampling")
    page.screenshot(path=str(shots / "sampling-tab.png"), full_page=True)
    print(f"screenshots in {shots}")

    # the job status lives in the server's runner: a reloaded page still shows the last job
    page.reload()
    page.get_by_text("HistoDiffusion Lab").first.wait_for()
    _open_tab(page, "1 · Pre-training")
    page.locator("#pretrain-status").get_by_text("done").wait_for()
    assert "sampling" in page.locator("#pretrain-status").inner_text()
    assert (shots / "sampling-tab.png").stat().st_size > 10_000
