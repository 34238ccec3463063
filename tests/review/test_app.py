"""Review web app over HTTP: Host check, CSRF, traversal, 409 on stale saves, escaping, bulk accept, on_complete."""

from __future__ import annotations

import http.client
import json
import os

import pandas as pd
import pytest
from review_fixtures import ITEMS, regenerate, write_review_inputs
from starlette.testclient import TestClient

from conftest import make_params
from tasks.review.audit import read_audit
from tasks.review.app import BackgroundServer, create_app, resolve_image

BASE = "http://127.0.0.1:8765"
XSS = '<img src=x onerror="alert(1)">'


@pytest.fixture
def p(tmp_path):
    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(params)
    return params


def _client(params, **kwargs) -> tuple[TestClient, str]:
    client = TestClient(create_app(params, **kwargs), base_url=BASE)
    page = client.get("/")
    assert page.status_code == 200
    return client, page.text.split('name="csrf-token" content="')[1].split('"')[0]


def _decide(client, token, file_name, label, version=0, reviewer="ann", **extra):
    return client.post("/api/decide", headers={"X-CSRF-Token": token},
                       json={"file_name": file_name, "label": label, "version": version, "reviewer": reviewer,
                             **extra})


def _corrections(params) -> pd.DataFrame:
    path = params.paths.review / "corrections.csv"
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else pd.DataFrame()


def test_foreign_host_header_is_refused(p):
    app = create_app(p)
    for base in ("http://evil.example:8765", "http://127.0.0.1:9999", "http://127.0.0.1.evil.example:8765"):
        assert TestClient(app, base_url=base).get("/api/items").status_code == 421
    assert TestClient(app, base_url="http://localhost:8765").get("/api/items").status_code == 200


def test_post_without_valid_csrf_token_is_403_and_changes_nothing(p):
    client, token = _client(p)
    f = client.get("/api/items").json()["items"][0]["file_name"]
    body = {"file_name": f, "label": "big", "version": 0, "reviewer": "ann"}
    assert client.post("/api/decide", json=body).status_code == 403
    assert client.post("/api/decide", json=body, headers={"X-CSRF-Token": "guess"}).status_code == 403
    assert client.post("/api/decide", content=json.dumps(body),  # a form post cannot set JSON + token
                       headers={"X-CSRF-Token": token, "Content-Type": "text/plain"}).status_code == 403
    assert client.post("/api/decide", json=body, headers={"X-CSRF-Token": token,
                                                          "Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/accept-confident", json={"threshold": 0, "reviewer": "x"}).status_code == 403
    assert _corrections(p).empty and read_audit(p.paths.review / "audit.jsonl") == []
    assert _decide(client, token, f, "big").status_code == 200


def test_image_route_serves_only_files_inside_the_generate_folder(p):
    client, _ = _client(p)
    item = client.get("/api/items").json()["items"][0]
    ok = client.get(f"/image/{item['file_name']}")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    secret = p.paths.generate.parent / "secret.png"
    secret.write_bytes((p.paths.generate / item["file_name"]).read_bytes())
    (p.paths.generate / "images" / "link.png").symlink_to(secret)
    for path in ("/image/%2e%2e/secret.png", "/image/images/%2E%2E/%2e%2e/secret.png", "/image/images/link.png",
                 "/image/%2Fetc%2Fpasswd", "/image/images/missing.png", "/image/..%5csecret.png"):
        assert client.get(path).status_code == 404, path


def test_literal_dotdot_over_a_real_socket_is_404(p):
    (p.paths.generate.parent / "secret.png").write_bytes(b"\x89PNG")
    with BackgroundServer(p, port=0) as server:
        for path, host, status in [("/image/../secret.png", "127.0.0.1", 404),  # sent verbatim, not normalised
                                   ("/image/images/../../secret.png", "127.0.0.1", 404),
                                   ("/api/items", "evil.example", 421), ("/api/items", "127.0.0.1", 200)]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", path, headers={"Host": f"{host}:{server.port}"})
            response = conn.getresponse()
            response.read()
            conn.close()
            assert response.status == status, path


def test_resolve_image_rejects_escapes(tmp_path):
    root = tmp_path / "gen"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "out.png").write_bytes(b"x")
    os.symlink(tmp_path / "out.png", root / "images" / "b.png")
    assert resolve_image(root, "images/a.png") == (root / "images" / "a.png").resolve()
    for bad in ("../out.png", "images/../../out.png", str(tmp_path / "out.png"), "images/b.png", "", "a\x00.png",
                "images\\a.png"):
        assert resolve_image(root, bad) is None, bad


def test_stale_save_gets_409_and_both_attempts_are_audited(p):
    client, token = _client(p)
    f = client.get("/api/items").json()["items"][0]["file_name"]
    assert _decide(client, token, f, "small", reviewer="ann").status_code == 200
    stale = _decide(client, token, f, "big", version=0, reviewer="bob")
    assert stale.status_code == 409 and stale.json()["item"]["reviewer"] == "ann"
    audit = [e for e in read_audit(p.paths.review / "audit.jsonl") if e["file_name"] == f]
    assert [(e["reviewer"], e["outcome"]) for e in audit] == [("ann", "saved"), ("bob", "conflict")]
    assert _corrections(p).set_index("file_name").loc[f, "final_label"] == "small"


def test_user_text_is_escaped_in_the_page_and_stored_verbatim(p):
    client, token = _client(p, reviewer=XSS)
    page = client.get("/").text
    assert XSS not in page and "&lt;img src=x" in page
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]
    f = client.get("/api/items").json()["items"][0]["file_name"]
    assert _decide(client, token, f, "big", reviewer=XSS, note="</script><b>x</b>").status_code == 200
    item = next(i for i in client.get("/api/items").json()["items"] if i["file_name"] == f)
    assert item["reviewer"] == XSS  # data, not markup: review.js renders it with textContent
    js = client.get("/static/review.js").text
    assert "innerHTML" not in js.replace("never innerHTML", "")


def test_class_names_with_markup_are_escaped(tmp_path):
    weird = make_params(tmp_path, {"review": {"mode": "manual"}, "dataset": {"classes": ["<b>s</b>", "big"]}})
    write_review_inputs(weird, items=[("<b>s</b>", "big", 0.9), ("big", "big", 0.8)])
    page = TestClient(create_app(weird), base_url=BASE).get("/").text
    assert "<b>s</b>" not in page and "\\u003cb\\u003es\\u003c/b\\u003e" in page


def test_bad_requests_are_4xx_and_change_nothing(p):
    client, token = _client(p)
    f = client.get("/api/items").json()["items"][0]["file_name"]
    assert _decide(client, token, f, "huge").status_code == 400
    assert _decide(client, token, "images/none.png", "big").status_code == 404
    assert _decide(client, token, f, "big", version="x").status_code == 400
    assert client.post("/api/decide", content=b"{", headers={"X-CSRF-Token": token,
                                                             "Content-Type": "application/json"}).status_code == 400
    assert client.post("/api/accept-confident", json={"threshold": 2, "reviewer": "a"},
                       headers={"X-CSRF-Token": token}).status_code == 400
    assert _corrections(p).empty


def test_undo_bulk_accept_and_on_complete(p):
    calls = []
    client, token = _client(p, on_complete=calls.append)
    items = client.get("/api/items").json()["items"]
    f = items[0]["file_name"]
    _decide(client, token, f, "reject")
    undone = client.post("/api/undo", headers={"X-CSRF-Token": token},
                         json={"file_name": f, "version": 1, "reviewer": "ann"})
    assert undone.status_code == 200 and undone.json()["item"]["status"] == "waiting"
    bulk = client.post("/api/accept-confident", json={"threshold": 0.9, "reviewer": "ann"},
                       headers={"X-CSRF-Token": token})
    n_confident = sum(conf >= 0.9 for _, _, conf in ITEMS)
    assert bulk.json()["accepted"] == n_confident and bulk.json()["progress"]["decided"] == n_confident
    assert calls == []
    waiting = [i for i in client.get("/api/items").json()["items"] if i["status"] == "waiting"]
    for item in waiting:
        assert _decide(client, token, item["file_name"], "big", version=item["version"]).status_code == 200
    assert len(calls) == 1 and calls[0]["waiting"] == 0 and calls[0]["reviewer"] == "ann"
    assert set(_corrections(p)["decision"]) <= {"accept", "correct"} and len(_corrections(p)) == len(ITEMS)


def test_page_open_across_a_regeneration_gets_409_and_decides_the_new_image_only_after_reload(p):
    client, token = _client(p)
    items = client.get("/api/items").json()["items"]
    decided, undecided = items[0], items[1]
    assert _decide(client, token, decided["file_name"], "small").status_code == 200  # now version 1
    for color, it in enumerate((decided, undecided), start=1):
        regenerate(p.paths.generate, it["file_name"], color=color)
    client2, token2 = _client(p)  # the app restarts on the regenerated images; the old tab still posts
    stale = _decide(client2, token2, decided["file_name"], "big", version=1)
    assert stale.status_code == 409 and stale.json()["item"]["status"] == "waiting"
    assert stale.json()["item"]["version"] == 2  # bumped by the invalidation
    unseen = _decide(client2, token2, undecided["file_name"], "big", version=0, sha256=undecided["sha256"])
    assert unseen.status_code == 409 and "different image now" in unseen.json()["error"]
    fresh = next(i for i in client2.get("/api/items").json()["items"] if i["file_name"] == undecided["file_name"])
    assert fresh["sha256"] != undecided["sha256"]
    ok = _decide(client2, token2, fresh["file_name"], "big", version=fresh["version"], sha256=fresh["sha256"])
    assert ok.status_code == 200
    assert _corrections(p).set_index("file_name").loc[fresh["file_name"], "sha256"] == fresh["sha256"]
    assert decided["file_name"] not in set(_corrections(p)["file_name"])


LS_ORIGIN = "http://127.0.0.1:8080"


def test_items_api_pages_and_refuses_bad_arguments(p):
    client, _ = _client(p)
    page = client.get("/api/items", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["matching"] == len(ITEMS) and page["index"] == 0
    rest = client.get("/api/items", params={"after": page["items"][-1]["position"]}).json()
    assert rest["index"] == 2 and len(rest["items"]) == len(ITEMS) - 2
    bad = client.get("/api/items", params={"status": "<b>"})
    assert bad.status_code == 400 and "status must be one of" in bad.json()["error"]


def test_page_config_has_hotkeys_blind_default_and_page_size(tmp_path):
    params = make_params(tmp_path, {"review": {"mode": "manual", "blind": True}})
    write_review_inputs(params)
    client, _ = _client(params)
    config = json.loads(client.get("/").text.split('<script id="config" type="application/json">')[1]
                        .split("</script>")[0])
    assert config["keys"] == ["1", "2"] and config["blind"] is True and config["page_size"] == 48


def test_decide_records_blind_and_the_batch_reports_each_item(p):
    client, token = _client(p)
    a, b = client.get("/api/items").json()["items"][:2]
    assert _decide(client, token, a["file_name"], "big", blind=True).status_code == 200
    batch = client.post("/api/decide-batch", headers={"X-CSRF-Token": token}, json={
        "reviewer": "bob", "blind": False, "decisions": [
            {"file_name": a["file_name"], "label": "small", "version": 0, "sha256": a["sha256"]},  # stale
            {"file_name": b["file_name"], "label": "small", "version": 0, "sha256": b["sha256"]}]})
    assert batch.status_code == 200
    assert [r["status"] for r in batch.json()["results"]] == [409, 200]
    assert batch.json()["progress"]["decided"] == 2
    audit = read_audit(p.paths.review / "audit.jsonl")
    assert [(e["file_name"], e["outcome"], e.get("context")) for e in audit] == [
        (a["file_name"], "saved", {"blind": True, "view": "single"}),
        (a["file_name"], "conflict", None),
        (b["file_name"], "saved", {"blind": False, "view": "grid"})]
    undo = client.post("/api/undo-batch", headers={"X-CSRF-Token": token}, json={
        "reviewer": "bob", "items": [{"file_name": b["file_name"], "version": 1},
                                     {"file_name": a["file_name"], "version": 0}]})
    assert [r["status"] for r in undo.json()["results"]] == [200, 409]
    assert undo.json()["progress"]["decided"] == 1
    assert client.post("/api/decide-batch", json={"decisions": []}).status_code == 403  # CSRF first
    assert client.post("/api/decide-batch", headers={"X-CSRF-Token": token},
                       json={"reviewer": "bob", "decisions": []}).status_code == 400


def test_images_allow_only_the_configured_label_studio_origin_and_the_api_never(tmp_path):
    params = make_params(tmp_path, {"review": {"mode": "manual", "labelstudio_origin": LS_ORIGIN}})
    write_review_inputs(params)
    client, token = _client(params)
    f = client.get("/api/items").json()["items"][0]["file_name"]
    image = client.get(f"/image/{f}", headers={"Origin": LS_ORIGIN})
    assert image.status_code == 200 and image.headers["access-control-allow-origin"] == LS_ORIGIN
    assert "Origin" in image.headers["vary"]
    other = client.get(f"/image/{f}", headers={"Origin": "http://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    preflight = {"Origin": LS_ORIGIN, "Access-Control-Request-Method": "GET"}
    assert client.options(f"/image/{f}", headers=preflight).status_code == 204
    assert client.options(f"/image/{f}", headers={**preflight, "Origin": "http://evil.example"}).status_code == 403
    for response in (client.get("/api/items", headers={"Origin": LS_ORIGIN}),
                     client.options("/api/decide", headers=preflight),
                     client.post("/api/decide", headers={"X-CSRF-Token": token, "Origin": LS_ORIGIN},
                                 json={"file_name": f, "label": "big", "version": 0, "reviewer": "x"})):
        assert "access-control-allow-origin" not in response.headers
    assert client.post("/api/decide", headers={"X-CSRF-Token": token, "Origin": LS_ORIGIN},
                       json={"file_name": f, "label": "big", "version": 0, "reviewer": "x"}).status_code == 403
    assert _corrections(params).empty


def test_no_origin_configured_means_no_cors_at_all(p):
    client, _ = _client(p)
    f = client.get("/api/items").json()["items"][0]["file_name"]
    assert "access-control-allow-origin" not in client.get(f"/image/{f}", headers={"Origin": LS_ORIGIN}).headers
    assert client.options(f"/image/{f}", headers={"Origin": LS_ORIGIN}).status_code == 403


@pytest.mark.parametrize("origin", ["*", "http://127.0.0.1:8080/", "http://a.example/path", "127.0.0.1:8080",
                                    "http://a.example, http://b.example"])
def test_labelstudio_origin_must_be_one_explicit_origin(tmp_path, origin):
    from tasks.params import ParamsError

    with pytest.raises(ParamsError, match="labelstudio_origin must be one origin"):
        make_params(tmp_path, {"review": {"labelstudio_origin": origin}})


def test_concurrent_reviewers_lose_and_duplicate_nothing(tmp_path):
    """10 reviewers over HTTP at once, each item wanted by two of them: one save each, the other gets 409."""
    import threading
    import urllib.request

    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    items = [("small" if i % 2 else "big", "big", 0.6) for i in range(40)]
    write_review_inputs(params, items=items)
    with BackgroundServer(params, port=0) as server:
        page = urllib.request.urlopen(server.url).read().decode()
        token = page.split('name="csrf-token" content="')[1].split('"')[0]
        queue = json.loads(urllib.request.urlopen(server.url + "api/items?limit=500").read())["items"]
        outcomes: list[tuple[str, str, int]] = []

        def reviewer(n: int) -> None:
            for it in queue[n % 5::5]:  # reviewers n and n + 5 want the same items
                body = json.dumps({"file_name": it["file_name"], "label": "small", "version": 0,
                                   "sha256": it["sha256"], "reviewer": f"r{n}"}).encode()
                req = urllib.request.Request(server.url + "api/decide", data=body, method="POST", headers={
                    "Content-Type": "application/json", "X-CSRF-Token": token})
                try:
                    status = urllib.request.urlopen(req).status
                except urllib.error.HTTPError as err:
                    status = err.code
                outcomes.append((it["file_name"], f"r{n}", status))

        threads = [threading.Thread(target=reviewer, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(outcomes) == 2 * len(items)
    by_item = {}
    for f, r, status in outcomes:
        by_item.setdefault(f, []).append(status)
    assert all(sorted(s) == [200, 409] for s in by_item.values())
    corrections = _corrections(params)
    assert len(corrections) == len(items) and corrections["file_name"].is_unique
    winners = {(f, r) for f, r, s in outcomes if s == 200}
    assert set(zip(corrections["file_name"], corrections["reviewer"])) == winners
    audit = read_audit(params.paths.review / "audit.jsonl")
    assert sum(e["outcome"] == "saved" for e in audit) == len(items)
    assert sum(e["outcome"] == "conflict" for e in audit) == len(items)


def test_a_class_out_of_the_real_manifold_gets_a_banner(p):
    from tasks.tables import write_class_quality

    assert "quality-flag" not in _client(p)[0].get("/").text  # no class_quality.csv (older predict): no banner
    write_class_quality(p.paths.predict, pd.DataFrame({
        "class": ["small", "big"], "n_generated": [3, 2], "n_real": [8, 8], "fid": [1.0, 50.0],
        "precision": [0.7, 0.04], "recall": [0.5, 0.0], "out_of_manifold": [False, True],
        "note": ["", "precision 0.040 < predict.min_class_precision 0.1"]}), p.classes)
    page = _client(p)[0].get("/").text
    assert page.count('class="quality-flag"') == 1
    assert "Class <strong>big</strong>" in page and "k-NN precision\n      0.04 over 2 images" in page
