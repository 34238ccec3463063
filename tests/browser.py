"""Shared Playwright set-up: Debian's headless Chromium (``/usr/bin/chromium``) launched with ``executable_path``.

Playwright's own browser download does not work here, so the ``chromium`` fixture installs Debian's package when it
is missing and apt-get can; where neither works (a CI image without Chromium) the browser tests skip with the
reason — set ``SYNTHLOOP_REQUIRE_BROWSER=1`` to make that a failure instead. Test modules import the fixtures they
use: ``from browser import browser_page, chromium  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tasks.io import sha256_file

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def _unavailable(reason: str) -> None:
    if os.environ.get("SYNTHLOOP_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing; skipped (with the reason) when that cannot work."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            _unavailable(f"{CHROMIUM} is missing and apt-get (as root) is not available to install it")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            if proc.returncode != 0:
                _unavailable(f"installing chromium failed: {' '.join(cmd)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-2000:]}")
    if not CHROMIUM.exists():
        _unavailable(f"apt-get reported success but {CHROMIUM} does not exist")
    return CHROMIUM


@pytest.fixture
def browser_page(chromium):
    """A fresh page in headless Chromium; the browser is closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 860})
        finally:
            browser.close()


def draw_xrays(params) -> None:
    """Replace the fixture's flat squares with X-ray-like pictures (for screenshots), manifest sha256 updated."""
    generated = Path(params.paths.generate)
    manifest = pd.read_csv(generated / "manifest.csv", dtype=str, keep_default_na=False)
    for i, name in enumerate(manifest["file_name"]):
        img = Image.new("L", (128, 128), 12)
        draw = ImageDraw.Draw(img)
        r = 22 + (i * 7) % 18
        draw.ellipse((40 - r // 2, 30, 40 + r, 30 + r), fill=170)                   # a joint head
        draw.rectangle((44, 30 + r, 58 + i % 9, 120), fill=140)                       # the shaft
        draw.arc((20, 10, 110, 100), 200, 330 + (i * 11) % 30, fill=210, width=6)     # a rim
        img.filter(ImageFilter.GaussianBlur(2)).save(generated / name)
    manifest["sha256"] = [sha256_file(generated / f) for f in manifest["file_name"]]
    manifest.to_csv(generated / "manifest.csv", index=False)


def wait_until(page, expression: str, timeout_s: float = 15.0) -> None:
    """Poll ``expression`` in the page until it is truthy. Not ``page.wait_for_function``: its in-page polling
    evaluates the string with ``eval``, which the review page's CSP (script-src 'self') rightly refuses whenever
    the condition is not already true at the first check. ``page.evaluate`` runs over the DevTools protocol."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        time.sleep(0.05)
