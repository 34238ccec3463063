"""The review page in a real browser: Debian's headless Chromium driven by Playwright, keyboard only.

The browser set-up (install Debian's ``chromium`` when missing, launch it with ``executable_path``) lives in
tests/browser.py, shared with tests/test_review_e2e.py.
"""

from __future__ import annotations

import pytest
from browser import browser_page, chromium  # noqa: F401  (fixtures)
from review_fixtures import ITEMS, decisions, write_review_inputs

from conftest import make_params
from tasks.review.audit import read_audit
from tasks.review.app import BackgroundServer

pytestmark = pytest.mark.browser

REVIEWER = "Ann <b>O'Neil</b>"


def test_review_with_the_keyboard_in_chromium(tmp_path, browser_page):
    from playwright.sync_api import expect

    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(params)
    page = browser_page
    page.on("dialog", lambda dialog: dialog.accept())  # the bulk-accept confirmation
    with BackgroundServer(params, port=0) as server:
        page.goto(server.url)
        progress = page.locator("#progress")
        expect(progress).to_have_text(f"0/{len(ITEMS)} done · 0 corrected · 0 rejected")
        page.fill("#reviewer-input", REVIEWER)
        page.click("#reviewer-save")
        expect(page.locator("#reviewer-name")).to_have_text(f"reviewing as {REVIEWER}")  # text, not markup

        # First in the queue: the disagreement (intended small, predicted big).
        expect(page.locator("#intended")).to_have_text("small")
        expect(page.locator("#predicted")).to_have_text("big")
        expect(page.locator("#confidence")).to_have_text("0.970")
        first = page.locator("#file-name").inner_text()
        page.keyboard.press("1")  # class 1 = small → a correction
        expect(progress).to_have_text("1/5 done · 1 corrected · 0 rejected")
        second = page.locator("#file-name").inner_text()
        assert second != first
        page.keyboard.press("Enter")  # accept the prediction
        expect(progress).to_have_text("2/5 done · 1 corrected · 0 rejected")
        third = page.locator("#file-name").inner_text()
        page.keyboard.press("x")
        expect(progress).to_have_text("3/5 done · 1 corrected · 1 rejected")
        page.keyboard.press("u")  # undo the reject: back on that item, waiting again
        expect(progress).to_have_text("2/5 done · 1 corrected · 0 rejected")
        expect(page.locator("#file-name")).to_have_text(third)
        expect(page.locator("#status")).to_have_text("waiting")
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#file-name")).to_have_text(second)
        expect(page.locator("#status")).to_have_text("accept")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#file-name")).to_have_text(third)

        page.select_option("#filter-status", "correct")  # filters: only the corrected item is shown
        expect(page.locator("#position")).to_have_text("item 1 of 1 shown")
        expect(page.locator("#file-name")).to_have_text(first)
        page.select_option("#filter-status", "")

        page.fill("#bulk-threshold", "0.5")
        page.click("#bulk-accept")  # confirm dialog accepted above
        expect(progress).to_have_text("5/5 done · 1 corrected · 0 rejected")

    corrections = decisions(params.paths.review / "corrections.csv").set_index("file_name")
    assert len(corrections) == len(ITEMS) and set(corrections["reviewer"]) == {REVIEWER}
    assert corrections.loc[first, ["decision", "final_label"]].tolist() == ["correct", "small"]
    assert corrections.loc[second, "decision"] == "accept" and corrections.loc[third, "decision"] == "accept"
    audit = read_audit(params.paths.review / "audit.jsonl")
    assert [e["action"] for e in audit[:4]] == ["decide", "decide", "decide", "undo"]
    assert audit[2]["new"]["decision"] == "reject" and audit[3]["new"] is None and audit[3]["file_name"] == third
    assert {e["action"] for e in audit[4:]} == {"bulk-accept"} and len(audit) == 4 + 3
    assert all(e["reviewer"] == REVIEWER and e["outcome"] == "saved" for e in audit)
