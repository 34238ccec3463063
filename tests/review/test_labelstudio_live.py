"""Label Studio round trip against a real Label Studio server on 127.0.0.1 (analytics and version checks off).

Label Studio is not a project dependency (a Django application with a few hundred packages), so the test runs
where it is installed: ``LABEL_STUDIO=/path/to/bin/label-studio`` (or ``label-studio`` on PATH) starts one in a
temporary data folder; ``LABEL_STUDIO_URL`` (+ ``LABEL_STUDIO_EMAIL``/``LABEL_STUDIO_PASSWORD``) uses a running one.
Elsewhere it skips, saying so; the format tests in test_labelstudio.py run everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, draw_xrays
from review_fixtures import decisions, write_review_inputs

from conftest import make_params
from tasks.review import labelstudio as ls
from tasks.review.app import BackgroundServer
from tasks.review.audit import read_audit

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]

EMAIL, PASSWORD = "ann@clinic.example", "synthloop-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(url, email, password) of a Label Studio server on 127.0.0.1."""
    if os.environ.get("LABEL_STUDIO_URL"):
        yield (os.environ["LABEL_STUDIO_URL"].rstrip("/"), os.environ.get("LABEL_STUDIO_EMAIL", EMAIL),
               os.environ.get("LABEL_STUDIO_PASSWORD", PASSWORD))
        return
    binary = os.environ.get("LABEL_STUDIO") or shutil.which("label-studio")
    if not binary:
        pytest.skip("Label Studio is not installed (not a project dependency); set LABEL_STUDIO to its "
                    "label-studio executable, e.g. from `python -m venv ls && ls/bin/pip install label-studio==1.23.*`")
    import httpx

    port, data = _free_port(), tmp_path_factory.mktemp("labelstudio")
    env = {**os.environ, "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
           "FRONTEND_SENTRY_DSN": "", "LABEL_STUDIO_BASE_DATA_DIR": str(data)}
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([binary, "start", "--no-browser", "--host", f"http://127.0.0.1:{port}",
                             "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
                             "--username", EMAIL, "--password", PASSWORD], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # first start migrates a database: minutes on a loaded machine
    try:
        while True:
            try:
                if httpx.get(url + "/api/version", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not start: {(data / 'server.log').read_text()[-2000:]}")
            time.sleep(2)
        yield url, EMAIL, PASSWORD
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _session(url: str, email: str, password: str):
    """A logged-in Label Studio session (session auth: 1.23 disables legacy API tokens by default)."""
    import httpx

    client = httpx.Client(base_url=url, follow_redirects=True, timeout=120)
    client.get("/user/login/")
    client.post("/user/login/", data={"email": email, "password": password,
                                      "csrfmiddlewaretoken": client.cookies.get("csrftoken")},
                headers={"Referer": url + "/user/login/"})
    client.headers.update({"X-CSRFToken": client.cookies.get("csrftoken"), "Referer": url + "/"})
    assert client.get("/api/projects").status_code == 200, "login to Label Studio failed"
    return client


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def _export(client, project: int, path: Path) -> Path:
    response = client.get(f"/api/projects/{project}/export", params={"exportType": "JSON"})
    assert response.status_code == 200, response.text[:500]
    path.write_bytes(response.content)
    return path


def test_export_annotate_import_change_import_again_and_the_image_shows(label_studio, tmp_path):
    url, email, password = label_studio
    params = make_params(tmp_path, {"review": {"mode": "manual", "labelstudio_origin": url}})
    write_review_inputs(params)
    draw_xrays(params)
    client = _session(url, email, password)
    with BackgroundServer(params, port=0) as server:
        tasks_path, config_path = ls.export_queue(params, tmp_path / "ls", base_url=server.url + "image/")
        project = client.post("/api/projects", json={"title": "synthloop review",
                                                     "label_config": config_path.read_text()})
        assert project.status_code == 201, project.text[:500]  # the labeling config is accepted
        pid = project.json()["id"]
        imported = client.post(f"/api/projects/{pid}/import", json=json.loads(tasks_path.read_text()))
        assert imported.status_code == 201, imported.text[:500]
        ls_tasks = client.get("/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]
        by_file = {t["data"]["file_name"]: t["id"] for t in ls_tasks}
        first, second = [t["data"]["file_name"] for t in json.loads(tasks_path.read_text())[:2]]
        notes = {}
        for f, label in ((first, "big"), (second, "reject")):
            made = client.post(f"/api/tasks/{by_file[f]}/annotations",
                               json={"result": _choice(label), "lead_time": 4.5})
            assert made.status_code == 201, made.text[:500]
            notes[f] = made.json()["id"]

        counts = ls.import_export(params, _export(client, pid, tmp_path / "export1.json"),
                                  annotators={str(client.get("/api/current-user/whoami").json()["id"]): email})
        assert (counts["imported"], counts["conflicts"], counts["image_changed"]) == (2, 0, 0)
        again = ls.import_export(params, _export(client, pid, tmp_path / "export2.json"))
        assert (again["imported"], again["unchanged"]) == (0, 2)  # a plain re-import changes nothing

        time.sleep(1.1)  # Label Studio's updated_at has second resolution on some databases
        changed = client.patch(f"/api/annotations/{notes[first]}", json={"result": _choice("small")})
        assert changed.status_code == 200, changed.text[:500]
        third = ls.import_export(params, _export(client, pid, tmp_path / "export3.json"))
        assert (third["updated"], third["unchanged"], third["conflicts"]) == (1, 1, 0)
        corrections = decisions(params.paths.review / "corrections.csv").set_index("file_name")
        assert corrections.loc[first, "final_label"] == "small" and corrections.loc[second, "decision"] == "reject"
        assert corrections.loc[first, "reviewer"].startswith("labelstudio:")
        last = [e for e in read_audit(params.paths.review / "audit.jsonl") if e["file_name"] == first][-1]
        assert last["context"]["annotation"]["lead_time"] == pytest.approx(4.5, abs=0.01)

        _screenshot_task(url, email, password, pid, by_file[first], server.url, tmp_path)


def _screenshot_task(url, email, password, project, task, image_base, tmp_path) -> None:
    """Open the task in Label Studio's labeling page in Chromium: the image (from the review server) loads."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: the API round trip passed, the page check needs Chromium")
    from playwright.sync_api import sync_playwright

    out = Path(os.environ.get("SYNTHLOOP_SCREENSHOT_DIR") or tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/user/login/")
            page.fill("input[name=email]", email)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/user/login" not in u, timeout=120_000)
            page.goto(f"{url}/projects/{project}/data?task={task}")
            selector = f'img[src^="{image_base}image/"]'
            page.wait_for_selector(selector, timeout=180_000)
            page.wait_for_function(
                "sel => [...document.querySelectorAll(sel)].some(i => i.complete && i.naturalWidth > 0)",
                arg=selector, timeout=120_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "labelstudio-task.png"))
        finally:
            browser.close()
