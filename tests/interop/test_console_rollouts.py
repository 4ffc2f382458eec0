"""Node labels and a staged rollout in the console, in a real browser:
Debian's Chromium driven by Playwright against the real binary (`verge
cloud`). Three nodes are played through the node protocol (join,
heartbeats with an apply attempt): a label is set on a node's page, a
rollout is started on the Rollouts page, its canary rolls the revision
back, the page shows the paused rollout with the failure, and the buttons
resume and then cancel it.

Skipped when Playwright or Chromium is missing, unless
VERGE_REQUIRE_BROWSER=1 (then it fails), as test_console.py.
"""

import tempfile

from cloud_procs import procs, start_cloud  # noqa: F401 (procs: fixture)
from test_console import console_page, need_browser
from test_console_revisions import call

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def test_labels_and_a_paused_rollout_in_the_console(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-roll-")
    url, admin = start_cloud(procs, workdir)

    creds = {}
    for name, labels in (("r1", {"site": "a"}), ("r2", {"site": "a"}), ("r3", {})):
        created = call(url, admin, "POST", "/api/nodes", {"name": name, "labels": labels})
        joined = call(url, None, "POST", "/api/agent/join", {"token": created["join_token"], "hostname": "t"})
        creds[name] = f"{joined['node_id']}.{joined['secret']}"
    call(url, admin, "POST", "/api/components", {"name": "app", "version": "2.0.0", "command": "bin/app"})

    with console_page(url, admin) as page:

        # r3 joins site a on its page.
        page.goto(url + "/#/nodes/r3")
        labels = page.get_by_test_id("node-labels")
        expect(labels).to_have_value("")
        labels.fill("site=a,rack=7")
        page.get_by_test_id("node-labels-save").click()
        expect(page.get_by_test_id("node-labels-saved")).to_have_text("saved")
        assert call(url, admin, "GET", "/api/nodes/r3")["labels"] == {"site": "a", "rack": "7"}
        page.get_by_test_id("nav-nodes").click()
        expect(page.locator('[data-testid="node-row"][data-id="r3"]')
               .get_by_test_id("node-row-labels")).to_have_text("rack=7,site=a")

        # A rollout to site a, canary 1: r1 gets the version.
        page.get_by_test_id("nav-rollouts").click()
        expect(page.get_by_test_id("rollouts-empty")).to_be_visible()
        expect(page.get_by_test_id("rollout-version")).to_have_value("2.0.0")
        page.get_by_test_id("rollout-selector").fill("site=a")
        page.get_by_test_id("rollout-canary").fill("1")
        page.get_by_test_id("rollout-start").click()
        expect(page.get_by_test_id("rollout-started")).to_contain_text("started")
        card = page.get_by_test_id("rollout")
        expect(card.get_by_test_id("rollout-state")).to_have_text("running")
        stages = card.get_by_test_id("rollout-stage")
        expect(stages).to_have_count(2)
        expect(stages.nth(0).get_by_test_id("rollout-node")).to_have_count(1)
        expect(stages.nth(1).get_by_test_id("rollout-node")).to_have_count(2)
        canary = stages.nth(0).locator('[data-testid="rollout-node"][data-node="r1"]')
        expect(canary.get_by_test_id("rollout-node-revision")).to_have_text("2")

        # The canary rolls it back: paused, with why.
        call(url, creds["r1"], "POST", "/api/agent/status", {"applied_version": 1, "attempt": {
            "version": 2, "state": "rolled_back", "started_ms": 1, "finished_ms": 2, "rolled_back_to": 1,
            "items": [{"kind": "component", "name": "app", "result": "failed",
                       "error": "version 2.0.0 is backoff"}]}})
        expect(card.get_by_test_id("rollout-state")).to_have_text("paused")
        expect(card.get_by_test_id("rollout-reason")).to_contain_text("1 of 1 node(s) failed")
        expect(stages.nth(0).get_by_test_id("rollout-stage-state")).to_have_text("failed")
        expect(canary.get_by_test_id("rollout-node-result")).to_have_text("rolled back")
        expect(canary.get_by_test_id("rollout-node-error")).to_contain_text("backoff")

        # Resume: stage 2 starts; cancel: no more.
        card.get_by_test_id("rollout-resume").click()
        expect(card.get_by_test_id("rollout-state")).to_have_text("running")
        expect(stages.nth(1).get_by_test_id("rollout-stage-state")).to_have_text("running")
        expect(stages.nth(1).locator('[data-testid="rollout-node"][data-node="r3"]')
               .get_by_test_id("rollout-node-revision")).to_have_text("2")
        card.get_by_test_id("rollout-cancel").click()
        expect(card.get_by_test_id("rollout-state")).to_have_text("cancelled")
        expect(card.get_by_test_id("rollout-reason")).to_contain_text("keep the version they got")
        expect(card.get_by_test_id("rollout-cancel")).to_have_count(0)
    rollout = call(url, admin, "GET", "/api/rollouts")[0]
    assert rollout["state"] == "cancelled", rollout
