"""The CraftLab app in a real browser: Playwright (Python) driving Debian's chromium, headless.

Loads the page, moves the sparsity slider, checks that the accuracy text and a plot change, and keeps a
full-page screenshot in ``test-artifacts/app.png``. Skipped (with the reason) when Playwright or a
chromium executable is missing, unless ``CRAFTLAB_REQUIRE_BROWSER`` is set (then it fails): ``.ci/run``
installs chromium with apt-get and sets it, so the test runs in CI. ``CRAFTLAB_CHROMIUM`` names another
chromium executable.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 180_000


def chromium_path() -> str | None:
    env = os.environ.get("CRAFTLAB_CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def unavailable(reason: str):
    """Skip, or fail where the browser test is required (CI sets CRAFTLAB_REQUIRE_BROWSER=1)."""
    if os.environ.get("CRAFTLAB_REQUIRE_BROWSER"):
        pytest.fail(f"CRAFTLAB_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        unavailable("no chromium executable (apt-get install chromium, or set CRAFTLAB_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def served():
    from craftlab_app.service import Explorer
    from craftlab_app.ui import launch

    before = torch.get_num_threads()
    ex = Explorer(epochs=1, sparsity_grid=(0.25, 0.5, 0.75, 0.9), bits_grid=(8, 6, 4, 3), landscape_steps=7,
                  path_steps=13, probe_size=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(port=port, prevent_thread_lock=True, explorer=ex, models=["vit-tiny"], threads=1)
    try:
        yield demo
    finally:
        demo.close()
        ex.close()
        torch.set_num_threads(before)


def compressed_accuracy(text: str) -> str:
    m = re.search(r"(\d+\.\d)%\s*compressed", text)
    assert m, text
    return m.group(1)


def test_slider_updates_accuracy_and_plots(browser, served):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served.local_url, timeout=TIMEOUT_MS)
    page.wait_for_selector("#acc-plain >> text=/\\d+\\.\\d% compressed/", timeout=TIMEOUT_MS)
    page.wait_for_selector("#acc-craft >> text=/\\d+\\.\\d% compressed/", timeout=TIMEOUT_MS)
    # curves, the 1-D slice and both 2-D landscapes render
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 5", timeout=TIMEOUT_MS)
    page.wait_for_selector("#sharp-craft >> text=λmax", timeout=TIMEOUT_MS)
    before_plain = compressed_accuracy(page.inner_text("#acc-plain"))
    before_craft = compressed_accuracy(page.inner_text("#acc-craft"))
    assert "magnitude 50%" in page.inner_text("#acc-plain")
    curve_before = page.inner_html("#curve-sparsity .js-plotly-plot")

    # move the sparsity slider: a click near the right end of the track (pointer up -> "release")
    track = page.locator("#sparsity input[type=range]")
    box = track.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 0.9 * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_function(
        "() => { const t = document.querySelector('#acc-plain').innerText; "
        "return /magnitude (8|9)\\d%/.test(t); }", timeout=TIMEOUT_MS)
    after_plain = compressed_accuracy(page.inner_text("#acc-plain"))
    after_craft = compressed_accuracy(page.inner_text("#acc-craft"))
    assert (after_plain, after_craft) != (before_plain, before_craft)
    assert float(after_plain) < float(before_plain)  # ~90% sparsity hurts a 1-epoch model
    # the accuracy-vs-sparsity plot moves its marker to the new setting
    page.wait_for_function(
        "(before) => { const el = document.querySelector('#curve-sparsity .js-plotly-plot'); "
        "return el && el.innerHTML !== before; }", arg=curve_before, timeout=TIMEOUT_MS)
    # the landscapes follow: the 1-D slice and both planes are redrawn for the new setting
    for plot in ("#path", "#plane-plain", "#plane-craft"):
        page.wait_for_function(
            "(sel) => { const el = document.querySelector(sel + ' .js-plotly-plot'); "
            "return el && /magnitude (8|9)\\d%/.test(el.textContent); }", arg=plot, timeout=TIMEOUT_MS)
    # the curves are complete once the background sweep is done (the page polls for them)
    page.wait_for_function(
        "() => ['#curve-sparsity', '#curve-bits'].every(s => { "
        "const el = document.querySelector(s + ' .js-plotly-plot'); "
        "return el && !el.textContent.includes('computing'); })", timeout=TIMEOUT_MS)
    time.sleep(1.0)  # let plotly finish drawing before the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert not errors, errors
    page.close()


def test_bad_model_shows_the_error_and_the_page_keeps_working(browser, served):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(served.local_url, timeout=TIMEOUT_MS)
    page.wait_for_selector("#acc-plain >> text=/\\d+\\.\\d% compressed/", timeout=TIMEOUT_MS)
    box = page.locator("#model input")
    box.fill("no-such-model")
    box.press("Enter")
    page.wait_for_selector("text=/unknown model 'no-such-model'/", timeout=TIMEOUT_MS)
    box.fill("vit-tiny")
    box.press("Enter")
    page.locator("#method label", has_text="wanda").click()
    page.wait_for_function("() => document.querySelector('#acc-plain').innerText.includes('wanda')",
                           timeout=TIMEOUT_MS)
    page.close()
