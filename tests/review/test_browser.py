"""The review page in a real browser: Debian's headless Chromium driven by Playwright, keyboard only.

The browser set-up (install Debian's ``chromium`` when missing, launch it with ``executable_path``) lives in
tests/browser.py, shared with tests/test_review_e2e.py.
"""

from __future__ import annotations

import pytest
import os
from pathlib import Path

from browser import browser_page, chromium, draw_xrays, wait_until  # noqa: F401  (fixtures)
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


def _shots(tmp_path) -> Path:
    """Where screenshots go: SYNTHLOOP_SCREENSHOT_DIR (docs/screenshots when refreshing them), else tmp_path."""
    return Path(os.environ.get("SYNTHLOOP_SCREENSHOT_DIR") or tmp_path)


def test_blind_mode_view_controls_palette_and_paging_with_the_keyboard(tmp_path, browser_page):
    from playwright.sync_api import expect

    params = make_params(tmp_path, {"review": {"mode": "manual", "blind": True}})
    items = [("small" if i % 2 else "big", "big" if i % 3 else "small", 0.5 + (i % 40) / 100) for i in range(60)]
    write_review_inputs(params, items=items)
    draw_xrays(params)
    page = browser_page
    with BackgroundServer(params, port=0) as server:
        page.goto(server.url)
        progress = page.locator("#progress")
        expect(progress).to_have_text("0/60 done · 0 corrected · 0 rejected")
        page.fill("#reviewer-input", "ann")
        page.click("#reviewer-save")
        expect(page.locator("#blind-flag")).to_have_text("blind")
        for field in ("#intended", "#predicted", "#confidence"):
            expect(page.locator(field)).to_have_text("hidden (blind)")
        page.keyboard.press("+")  # zoom, window and level are CSS on the image
        page.keyboard.press("]")
        page.keyboard.press(",")
        image = page.locator("#image")
        expect(image).to_have_attribute("style", "transform: translate(0px, 0px) scale(1.25); "
                                                  "filter: brightness(0.9) contrast(1.2);")
        wait_until(page, "document.getElementById('image').naturalWidth > 0")
        page.screenshot(path=str(_shots(tmp_path) / "review-blind.png"))
        page.keyboard.press("0")
        expect(image).to_have_attribute("style", "transform: translate(0px, 0px) scale(1); "
                                                  "filter: brightness(1) contrast(1);")
        shown = page.locator("#file-name").inner_text()
        assert "/" not in shown  # the folder (images/<intended class>/) is hidden too
        page.keyboard.press("Enter")  # the prediction is hidden: Enter cannot accept it
        expect(page.locator("#message")).to_contain_text("blind mode: choose the class")
        expect(progress).to_have_text("0/60 done · 0 corrected · 0 rejected")
        page.keyboard.press("2")  # big
        expect(progress).to_contain_text("1/60 done")
        page.keyboard.press("ArrowLeft")  # decided: the labels show now
        first = page.locator("#file-name").inner_text()
        assert first.endswith("/" + shown)
        expect(page.locator("#intended")).not_to_have_text("hidden (blind)")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("b")  # blind off: this decision is not blind
        expect(page.locator("#blind-flag")).to_have_text("")
        expect(page.locator("#intended")).not_to_have_text("hidden (blind)")
        second = page.locator("#file-name").inner_text()
        page.keyboard.press("/")  # the palette: any class by name
        page.keyboard.type("sma")
        page.keyboard.press("Enter")
        expect(progress).to_contain_text("2/60 done")
        expect(page.locator("#position")).to_have_text("item 3 of 60 shown")
        page.keyboard.press("PageDown")  # the next page comes from the server, same offset
        expect(page.locator("#position")).to_have_text("item 51 of 60 shown")
        page.keyboard.press("PageUp")
        expect(page.locator("#position")).to_have_text("item 3 of 60 shown")
    audit = read_audit(params.paths.review / "audit.jsonl")
    assert [(e["file_name"], e["new"]["final_label"], e["context"]) for e in audit] == [
        (first, "big", {"blind": True, "view": "single"}), (second, "small", {"blind": False, "view": "single"})]


def test_grid_accepts_relabels_and_undoes_a_selection_with_the_keyboard(tmp_path, browser_page):
    from playwright.sync_api import expect

    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    items = [("small" if i % 2 else "big", "big" if i % 3 else "small", 0.5 + (i % 40) / 100) for i in range(60)]
    write_review_inputs(params, items=items)
    draw_xrays(params)
    page = browser_page
    with BackgroundServer(params, port=0) as server:
        page.goto(server.url)
        progress = page.locator("#progress")
        page.fill("#reviewer-input", "ann")
        page.click("#reviewer-save")
        expect(progress).to_have_text("0/60 done · 0 corrected · 0 rejected")
        page.keyboard.press("g")
        cells = page.locator("#grid figure")
        expect(cells).to_have_count(48)  # one page of thumbnails
        for key in (" ", "ArrowRight", " ", "ArrowDown", " "):  # select three
            page.keyboard.press(key)
        expect(page.locator("#grid figure.selected")).to_have_count(3)
        expect(page.locator("#view-flag")).to_have_text("grid · 3 selected")
        picked = [cells.nth(i).get_attribute("data-index") for i in range(48)
                  if "selected" in (cells.nth(i).get_attribute("class") or "")]
        assert picked == ["0", "1", "9"]
        wait_until(page, "[...document.querySelectorAll('#grid img')].every(i => i.naturalWidth > 0)")
        page.screenshot(path=str(_shots(tmp_path) / "review-grid.png"))
        page.keyboard.press("1")  # relabel all three as small
        expect(progress).to_contain_text("3/60 done")
        expect(page.locator("#grid figure.selected")).to_have_count(0)
        page.keyboard.press("u")  # one undo takes the whole batch back
        expect(progress).to_contain_text("0/60 done")
        page.keyboard.press("*")  # select the page, accept each prediction
        page.keyboard.press("Enter")
        expect(progress).to_contain_text("48/60 done")
    audit = read_audit(params.paths.review / "audit.jsonl")
    assert [e["action"] for e in audit] == ["decide"] * 3 + ["undo"] * 3 + ["decide"] * 48
    assert {e["new"]["final_label"] for e in audit[:3]} == {"small"} and audit[3]["new"] is None
    assert all(e["context"] == {"blind": False, "view": "grid"} for e in audit[6:])
    corrections = decisions(params.paths.review / "corrections.csv")
    assert len(corrections) == 48 and set(corrections["decision"]) == {"accept"}


def test_blind_second_reader_does_not_see_the_first_readers_label(tmp_path, browser_page):
    """An overlap item ann decided owes bob an independent read: in blind mode he sees neither the intended class
    and prediction nor ann's label and name until he has decided; the page takes him to it after a decision."""
    from playwright.sync_api import expect
    from review_fixtures import open_review_store

    params = make_params(tmp_path, {"review": {"mode": "manual", "blind": True, "overlap_share": 1.0,
                                               "audit_share": 0.0}})
    write_review_inputs(params)
    store = open_review_store(params)
    first, second = store.required_waiting()[:2]
    store.decide(first, "small", version=0, reviewer="ann")
    page = browser_page
    with BackgroundServer(params, port=0) as server:
        page.goto(server.url)
        page.fill("#reviewer-input", "bob")
        page.click("#reviewer-save")
        page.select_option("#filter-status", "owed")  # what bob owes: ann's item first, in queue order
        expect(page.locator("#file-name")).to_have_text(first.split("/")[-1])
        expect(page.locator("#status")).to_have_text("needs your second-read")
        for field in ("#intended", "#predicted", "#confidence", "#final-label", "#decided-by"):
            expect(page.locator(field)).to_have_text("hidden (blind)")
        assert "small" not in page.locator("#single").inner_text().replace(first.split("/")[-1], "")
        page.keyboard.press("2")  # bob reads it as big
        expect(page.locator("#file-name")).to_have_text(second.split("/")[-1])  # the next item he owes
        page.select_option("#filter-status", "")
        expect(page.locator("#file-name")).to_have_text(first)  # read by bob now: the labels show
        expect(page.locator("#decided-by")).to_have_text("bob")
        expect(page.locator("#intended")).not_to_have_text("hidden (blind)")
    audit = read_audit(params.paths.review / "audit.jsonl")
    assert [(e["reviewer"], e["new"]["final_label"], e.get("context")) for e in audit] == [
        ("ann", "small", None), ("bob", "big", {"blind": True, "view": "single"})]
