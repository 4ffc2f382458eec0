"""A node's revisions in the console, in a real browser: Debian's Chromium
driven by Playwright against the real binary (`verge cloud`). The node is
played through the node protocol (join, heartbeats with an apply attempt)
so that the page shows a failed revision with its failed item; then the
buttons roll back and cancel.

Skipped when Playwright or Chromium is missing, unless
VERGE_REQUIRE_BROWSER=1 (then it fails), as test_console.py.
"""

import json
import tempfile
import urllib.request

from cloud_procs import procs, start_cloud  # noqa: F401 (procs: fixture)
from test_console import console_page, need_browser

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def call(url, auth, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read()
        return json.loads(text) if text else None


def test_revisions_failed_items_rollback_and_cancel(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-rev-")
    url, admin = start_cloud(procs, workdir)

    created = call(url, admin, "POST", "/api/nodes", {"name": "edge-r"})
    joined = call(url, None, "POST", "/api/agent/join", {"token": created["join_token"], "hostname": "t"})
    node = f"{joined['node_id']}.{joined['secret']}"
    for rule in ("a", "b"):
        call(url, admin, "POST", "/api/rules",
             {"id": rule, "node_id": "edge-r", "sql": f'SELECT * FROM "{rule}"'})
    # Revision 2 applied; revision 3 failed on rule b, the node went back to 2.
    call(url, node, "POST", "/api/agent/status", {"applied_version": 2, "attempt": {
        "version": 3, "state": "rolled_back", "started_ms": 1, "finished_ms": 2, "rolled_back_to": 2,
        "items": [{"kind": "rule", "name": "b", "result": "failed", "error": "bad topic filter"}]}})

    with console_page(url, admin) as page:
        page.goto(url + "/#/nodes/edge-r")

        rows = page.get_by_test_id("revision-row")
        expect(rows).to_have_count(3)
        expect(page.get_by_test_id("revisions-state")).to_have_text("failed")
        expect(page.get_by_test_id("revisions-state-error")).to_contain_text("bad topic filter")
        row3 = page.locator('[data-testid="revision-row"][data-revision="3"]')
        expect(row3.get_by_test_id("revision-result")).to_have_text("rolled back")
        expect(row3.get_by_test_id("revision-summary")).to_have_text("rule `b` added")
        expect(page.locator('[data-testid="revision-row"][data-revision="2"]')
               .get_by_test_id("revision-result")).to_have_text("applied")
        # The newest revision is shown: its failed item and its diff.
        detail = page.get_by_test_id("revision-detail")
        expect(detail.locator('[data-testid="revision-item"][data-result="failed"]')
               ).to_contain_text("bad topic filter")
        expect(detail.locator('[data-testid="diff-row"][data-kind="rules"][data-change="added"]')
               ).to_contain_text("b")

        # Roll back to revision 2: a new revision 4.
        page.locator('[data-testid="revision-row"][data-revision="2"]').get_by_test_id("revision-rollback").click()
        row4 = page.locator('[data-testid="revision-row"][data-revision="4"]')
        expect(row4.get_by_test_id("revision-summary")).to_have_text("rollback to 2")
        expect(row4.get_by_test_id("revision-author")).to_have_text("admin")
        expect(page.get_by_test_id("revisions-state")).to_have_text("pending")

        # Cancel it: the node stays on 2 (revision 5 holds 2's content).
        page.get_by_test_id("revision-cancel").click()
        row5 = page.locator('[data-testid="revision-row"][data-revision="5"]')
        expect(row5.get_by_test_id("revision-summary")).to_have_text("cancel revision 4: stay on 2")
        row5.get_by_test_id("revision-show").click()
        expect(page.get_by_test_id("revision-detail-title")).to_contain_text("Revision 5")
    state = call(url, admin, "GET", "/api/nodes/edge-r/revisions/5")["state"]
    assert [r["id"] for r in state["rules"]] == ["a"], state
