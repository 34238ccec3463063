"""Review app at scale: a 10,000-item queue, 10 concurrent reviewers on 127.0.0.1, and a scripted browser session.

Builds a queue of ``--items`` tiny generated images (with generate's manifest and predict's predictions.csv) in a
temporary folder and serves it with the real review server (uvicorn, one process, as ``synthloop review``). Then:

1. page load: p95 latency and bytes of ``GET /`` and of the page's first ``/api/items`` page, and of a page deep
   in the queue under a filter (the page never fetches the whole queue);
2. decisions under load: ``--reviewers`` threads, each on its own keep-alive connection, post decisions as fast as
   the server answers; every item is wanted by two reviewers, so half the posts must be refused (409). Reports
   p50/p95/max latency of a decision and decisions saved per second; then checks that nothing was lost or
   duplicated (corrections.csv has exactly one row per item, by the reviewer whose save got 200; the audit log
   has one saved and one conflict entry per item);
3. a scripted browser: headless Chromium types the class key for ``--browser-decisions`` items, waiting for each
   save to show; decisions per minute (the pace of a person who never hesitates — an upper bound).

``python -m benchmarks.bench_review [--items N] [--reviewers R] [--smoke]`` (``--smoke``: 300 items, no browser).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (offline defaults)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")


def _params(root: Path, n_items: int):
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_params  # the real params.yaml, paths under root
    from review_fixtures import write_review_inputs

    params = make_params(root, {"review": {"mode": "manual"}})
    items = [("small" if i % 2 else "big", "big" if i % 3 else "small", 0.5 + (i % 50) / 100)
             for i in range(n_items)]
    write_review_inputs(params, items=items)
    return params


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * statistics.median(values), 1), "p95_ms": round(1000 * _pct(values, 0.95), 1),
            "max_ms": round(1000 * max(values), 1)}


def _get(port: int, path: str) -> tuple[float, int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, response.status, body


def page_load(port: int, repeats: int = 20) -> dict[str, Any]:
    """Latency and size of the page and of the JSON it fetches first, and of a filtered page deep in the queue."""
    out = {}
    for name, path in (("page", "/"), ("first_items_page", "/api/items?limit=48"),
                       ("deep_filtered_page", "/api/items?status=waiting&cls=small&after=7000&limit=48")):
        runs = [_get(port, path) for _ in range(repeats)]
        assert all(status == 200 for _, status, _ in runs), f"{path}: {[s for _, s, _ in runs]}"
        out[name] = {**_ms([t for t, _, _ in runs]), "bytes": len(runs[0][2])}
    return out


def concurrent_decisions(port: int, token: str, queue: list[dict[str, Any]], reviewers: int,
                         per_reviewer: int) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
    """``reviewers`` threads post decisions at once; reviewers n and n + reviewers/2 want the same items."""
    half = max(1, reviewers // 2)
    outcomes: list[tuple[str, str, int]] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def reviewer(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = queue[n % half::half][:per_reviewer]
        for it in mine:
            body = json.dumps({"file_name": it["file_name"], "label": "small", "version": 0, "sha256": it["sha256"],
                               "reviewer": f"reviewer-{n}"})
            start = time.perf_counter()
            conn.request("POST", "/api/decide", body=body, headers={"Content-Type": "application/json",
                                                                    "X-CSRF-Token": token})
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                outcomes.append((it["file_name"], f"reviewer-{n}", response.status))
        conn.close()

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in range(reviewers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    saved = sum(s == 200 for _, _, s in outcomes)
    return ({"reviewers": reviewers, "posts": len(outcomes), "saved": saved,
             "refused_409": sum(s == 409 for _, _, s in outcomes),
             "other_status": sorted({s for _, _, s in outcomes} - {200, 409}),
             "decision_latency": _ms(latencies), "saved_per_s": round(saved / wall, 1), "wall_s": round(wall, 1)},
            outcomes)


def check_nothing_lost(params, outcomes: list[tuple[str, str, int]]) -> dict[str, Any]:
    """corrections.csv holds exactly the 200s (one row per item, the winner's); audit: one saved + one conflict."""
    from tasks.review.audit import read_audit
    from tasks.tables import read_corrections

    corrections = read_corrections(params.paths.review, params.classes)
    winners = {(f, r) for f, r, s in outcomes if s == 200}
    wanted = {f for f, _, _ in outcomes}
    audit = read_audit(params.paths.review / "audit.jsonl")
    per_item: dict[str, list[int]] = {}
    for f, _, s in outcomes:
        per_item.setdefault(f, []).append(s)
    checks = {
        "one_row_per_decided_item": bool(corrections["file_name"].is_unique and set(corrections["file_name"]) == wanted),
        "rows_are_the_winning_saves": set(zip(corrections["file_name"], corrections["reviewer"])) == winners,
        "each_item_one_200_one_409": all(sorted(s) == [200, 409] for s in per_item.values()),
        "audit_saved_equals_200s": sum(e["outcome"] == "saved" for e in audit) == len(winners),
        "audit_conflicts_equal_409s": sum(e["outcome"] == "conflict" for e in audit) == sum(
            s == 409 for _, _, s in outcomes),
    }
    return {**checks, "ok": all(checks.values())}


def browser_session(url: str, decisions: int) -> dict[str, Any]:
    """Chromium presses the class key ``decisions`` times, waiting for each save to appear; decisions/minute."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("#file-name:not(:empty)")
            load_s = time.perf_counter() - start
            page.fill("#reviewer-input", "scripted")
            page.click("#reviewer-save")
            page.select_option("#filter-status", "waiting")  # the concurrent reviewers decided the first items
            expect(page.locator("#status")).to_have_text("waiting", timeout=60_000)
            done0 = int(page.locator("#progress").inner_text().split("/")[0])
            start = time.perf_counter()
            for k in range(1, decisions + 1):
                page.keyboard.press("2")
                expect(page.locator("#progress")).to_contain_text(f"{done0 + k}/", timeout=60_000)
            elapsed = time.perf_counter() - start
        finally:
            browser.close()
    return {"decisions": decisions, "seconds": round(elapsed, 1), "per_minute": round(60 * decisions / elapsed, 1),
            "page_ready_s": round(load_s, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the figures (and whether nothing was lost)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_review", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--reviewers", type=int, default=10)
    parser.add_argument("--per-reviewer", type=int, default=60, help="decisions each reviewer posts")
    parser.add_argument("--browser-decisions", type=int, default=60)
    parser.add_argument("--smoke", action="store_true", help="300 items, 4 reviewers, no browser")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args([] if argv is None else argv)
    if args.smoke:
        args.items, args.reviewers, args.per_reviewer, args.browser_decisions = 300, 4, 10, 0
    from tasks.review.app import BackgroundServer

    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        start = time.perf_counter()
        params = _params(Path(tmp), args.items)
        build_s = time.perf_counter() - start
        with BackgroundServer(params, port=0) as server:
            result: dict[str, Any] = {"items": args.items, "queue_build_s": round(build_s, 1),
                                      "page_load": page_load(server.port)}
            _, _, html = _get(server.port, "/")
            token = html.decode().split('name="csrf-token" content="')[1].split('"')[0]
            _, _, body = _get(server.port, f"/api/items?limit=500&cls=small")
            queue = json.loads(body)["items"]  # the first 500 "small" items: all in the first pages of the queue
            load, outcomes = concurrent_decisions(server.port, token, queue, args.reviewers, args.per_reviewer)
            result["concurrent"] = load
            result["nothing_lost"] = check_nothing_lost(params, outcomes)
            if args.browser_decisions and CHROMIUM.exists():
                result["browser"] = browser_session(server.url, args.browser_decisions)
    c, pl = result["concurrent"], result["page_load"]
    print(f"review at {args.items} items: page {pl['page']['p95_ms']} ms p95, first items page "
          f"{pl['first_items_page']['p95_ms']} ms p95 ({pl['first_items_page']['bytes']} bytes); "
          f"{c['reviewers']} reviewers: decision p95 {c['decision_latency']['p95_ms']} ms, {c['saved_per_s']} saves/s, "
          f"{c['refused_409']} 409s; nothing lost: {result['nothing_lost']['ok']}"
          + (f"; browser {result['browser']['per_minute']} decisions/min" if "browser" in result else ""))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
