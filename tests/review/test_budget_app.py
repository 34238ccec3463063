"""The review app shows the budget: /api/status carries it, the page a line at load time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_budget import project  # noqa: E402

def test_app_status_and_page_show_the_budget_line(tmp_path):
    from starlette.testclient import TestClient

    from tasks.review.app import create_app

    p = project(tmp_path, {"budget": 8, "audit_share": 0.1, "beyond_budget": "intended"})
    client = TestClient(create_app(p), base_url="http://127.0.0.1:8765")
    status = client.get("/api/status").json()
    assert status["waiting"] == 8 and status["beyond_budget"] == 32
    assert status["budget"]["budget_items"] == 8 and status["budget"]["decided_in_budget"] == 0
    assert status["budget"]["budget_line"].startswith("0 decided of budget 8")
    assert status["budget"]["remaining_error"]["policy"] == "intended"
    assert "0 decided of budget 8" in client.get("/").text
