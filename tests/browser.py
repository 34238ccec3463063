"""Shared Playwright set-up: Debian's headless Chromium (``/usr/bin/chromium``) launched with ``executable_path``.

Playwright's own browser download does not work here, so the ``chromium`` fixture installs Debian's package when it
is missing and fails (never skips) with the reason when it cannot. Test modules import the fixtures they use:
``from browser import browser_page, chromium  # noqa: F401``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing; a failed install fails the test (no skip)."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing and apt-get is not available to install it")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            if proc.returncode != 0:
                pytest.fail(f"installing chromium failed: {' '.join(cmd)} exited {proc.returncode}:\n"
                            f"{proc.stderr[-2000:]}")
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get reported success but {CHROMIUM} does not exist")
    return CHROMIUM


@pytest.fixture
def browser_page(chromium):
    """A fresh page in headless Chromium; the browser is closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()
