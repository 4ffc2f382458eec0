"""The walkthrough in a real browser: Debian's Chromium driven by Playwright
through the cloud console, against the real binary (`verge cloud`, a node
joined with `verge node --cloud --join`, a `verge device simulate` device).

Skipped when Playwright or Chromium is missing, unless VERGE_REQUIRE_BROWSER=1
(then it fails). Chromium: $CHROMIUM, default /usr/bin/chromium (apt-get
install chromium); Playwright: `pip install playwright` (no `playwright
install`: the system Chromium is used). A screenshot of the last page goes to
tests/interop/artifacts/console.png.
"""

import contextlib
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cloud_procs import Proc, api, procs, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)
from verge_interop import REPO, verge_bin


def send(url, token, method, path, body):
    """An API call with a JSON body; the JSON answer."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test says so below
    sync_playwright = None

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEMO_WAT = REPO / "crates" / "verge" / "src" / "demo" / "demo-tag.wat"
RULE_SQL = 'SELECT topic(2) AS device, temperature FROM "devices/+/telemetry"'
RULE_ACTIONS = '[{"type": "function", "name": "demo-tag"}]'
SLOW = 30_000  # ms any one thing that waits on the node or the device may take


def need(ok, why):
    """Skip (or fail, with VERGE_REQUIRE_BROWSER=1) when `ok` is false."""
    if ok:
        return
    if os.environ.get("VERGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why} (VERGE_REQUIRE_BROWSER=1)")
    pytest.skip(why)


def need_browser():
    """Skip (or fail) unless Playwright, Chromium and the binary are there."""
    need(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    need(os.path.exists(verge_bin()), f"no verge binary at {verge_bin()} (cargo build -p verge)")


@contextlib.contextmanager
def console_page(url, token, timeout_ms=10_000):
    """A Chromium page logged in to the console at `url` with `token`
    (dialogs accepted); fails the test if the page raised a JavaScript
    error by the end."""
    need_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(timeout_ms)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        try:
            page.goto(url + "/")
            page.get_by_test_id("login-token").fill(token)
            page.get_by_test_id("login-submit").click()
            expect(page.get_by_test_id("nav-nodes")).to_be_visible()
            yield page
        finally:
            browser.close()
        assert not errors, f"JavaScript errors in the console: {errors}"


def goto(page, testid):
    page.get_by_test_id(testid).click()


def test_walkthrough_in_the_console(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-")
    cloud_url, admin_token = start_cloud(procs, workdir)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(10_000)
        page_errors = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        # The console makes no request outside its own origin.
        outside = []
        page.on("request", lambda r: r.url.startswith(cloud_url) or outside.append(r.url))
        try:
            walkthrough(page, procs, workdir, cloud_url, admin_token)
        finally:
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
            browser.close()
        assert not page_errors, f"JavaScript errors in the console: {page_errors}"
        assert not outside, f"the console requested other origins: {outside}"


def walkthrough(page, procs, workdir, cloud_url, admin_token):
    # Log in: a wrong token is refused, the admin token works.
    page.goto(cloud_url + "/")
    page.get_by_test_id("login-token").fill("not-a-token")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("token refused")
    page.get_by_test_id("login-token").fill(admin_token)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("nav-nodes")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('verge.token')") == admin_token

    # 1. Create a node; the join command and token are shown once.
    page.get_by_test_id("node-name").fill("edge-1")
    page.get_by_test_id("node-create").click()
    expect(page.get_by_test_id("join-command")).to_be_visible()
    join_command = page.get_by_test_id("join-command").text_content()
    join_token = page.get_by_test_id("join-token").text_content()
    assert f"--cloud {cloud_url}" in join_command and f"--join {join_token}" in join_command, join_command
    # ... and the same for a machine that already runs a node: its own ports and data dir.
    beside = page.get_by_test_id("join-command-beside").text_content()
    assert beside.startswith(join_command) and "--port-offset 10" in beside and "--data-dir ./" in beside, beside
    row = page.locator('[data-testid="node-row"][data-name="edge-1"]')
    expect(row.get_by_test_id("status")).to_have_text("pending")

    # 2. Start the node with that token; the page shows it online.
    node, ports = start_node(procs, workdir, cloud_url, join_token)
    expect(row.get_by_test_id("status")).to_have_text("online", timeout=SLOW)
    expect(row.get_by_test_id("node-last-seen")).to_contain_text("ago")
    node_id = row.get_attribute("data-id")

    # 3. A device bound to the node; its secret is shown once.
    goto(page, "nav-devices")
    page.locator(f'#device-node option[value="{node_id}"]').wait_for(state="attached")
    page.get_by_test_id("device-node").select_option(node_id)
    page.get_by_test_id("device-name").fill("d1")
    page.get_by_test_id("device-create").click()
    expect(page.get_by_test_id("device-secret")).to_be_visible()
    device_id = page.get_by_test_id("device-id").text_content()
    secret = page.get_by_test_id("device-secret").text_content()
    assert device_id and secret
    device_row = page.locator(f'[data-testid="device-row"][data-id="{device_id}"]')
    expect(device_row).to_be_visible()

    # 4. The device program connects once the node has the device.
    def deployed():
        deps = api(cloud_url, admin_token, "/api/deployments")
        return any(d["node_id"] == node_id and d["state"] == "in_sync" for d in deps)
    wait_for("the node did not apply the state with the device", deployed, node, timeout=SLOW / 1000)
    device = Proc("device", ["device", "simulate", "--node", f"127.0.0.1:{ports['tcp']}",
                             "--device", device_id, "--secret", secret], workdir)
    procs.append(device)

    # 5a. Upload the demo function (WebAssembly text) in the console.
    goto(page, "nav-functions")
    page.get_by_test_id("function-file").set_input_files(str(DEMO_WAT))
    page.get_by_test_id("function-name").fill("demo-tag")
    page.get_by_test_id("function-upload").click()
    expect(page.get_by_test_id("function-uploaded")).to_contain_text("uploaded demo-tag")
    expect(page.locator('[data-testid="function-row"][data-name="demo-tag"]')).to_be_visible()
    # ... and try it in the cloud's sandbox.
    page.get_by_test_id("invoke-run").click()
    expect(page.get_by_test_id("invoke-output")).to_contain_text("processed/devices/d1/telemetry")

    # 5b. A rule with bad SQL is refused inline; the good one is saved.
    goto(page, "nav-rules")
    page.locator(f'#rule-node option[value="{node_id}"]').wait_for(state="attached")
    page.get_by_test_id("rule-node").select_option(node_id)
    page.get_by_test_id("rule-id").fill("bad-sql")
    page.get_by_test_id("rule-sql").fill("SELECT temperature FROM")
    page.get_by_test_id("rule-actions").fill(RULE_ACTIONS)
    page.get_by_test_id("rule-save").click()
    expect(page.get_by_test_id("rule-error")).to_be_visible()
    expect(page.get_by_test_id("rule-error")).to_contain_text("invalid_rule")
    expect(page.locator('[data-testid="rule-row"][data-id="bad-sql"]')).to_have_count(0)

    page.get_by_test_id("rule-id").fill("to-function")
    page.get_by_test_id("rule-sql").fill(RULE_SQL)
    page.get_by_test_id("rule-test-topic").fill(f"devices/{device_id}/telemetry")
    page.get_by_test_id("rule-test-payload").fill('{"temperature": 21.5}')
    page.get_by_test_id("rule-test-run").click()
    expect(page.get_by_test_id("rule-test-output")).to_contain_text("1 row(s)")
    expect(page.get_by_test_id("rule-test-output")).to_contain_text("21.5")
    page.get_by_test_id("rule-save").click()
    expect(page.get_by_test_id("rule-saved")).to_contain_text("saved to-function")
    expect(page.get_by_test_id("rule-error")).to_be_hidden()
    expect(page.locator('[data-testid="rule-row"][data-id="to-function"]')).to_be_visible()

    # 5c. A component: a process version with its files (.tar.gz) added
    #     in the console, then assigned to the node; both pages show it.
    archive = Path(workdir) / "ticker-1.0.0.tar.gz"
    script = Path(workdir) / "ticker.sh"
    script.write_text("#!/bin/sh\nwhile true; do echo tick; sleep 1; done\n")
    script.chmod(0o755)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(script, arcname="ticker.sh")
    goto(page, "nav-components")
    page.get_by_test_id("component-name").fill("ticker")
    page.get_by_test_id("component-version").fill("1.0.0")
    page.get_by_test_id("component-kind").select_option("process")
    page.get_by_test_id("component-command").fill("/bin/sh")
    page.get_by_test_id("component-spec").fill('{"args": ["ticker.sh"], "restart": "always", "update_grace": "2s"}')
    page.get_by_test_id("component-artifact").set_input_files(str(archive))
    page.get_by_test_id("component-add").click()
    expect(page.get_by_test_id("component-added")).to_contain_text("added ticker 1.0.0 with files")
    component_row = page.locator('[data-testid="component-row"][data-name="ticker"]')
    expect(component_row.get_by_test_id("component-latest")).to_have_text("1.0.0")
    # A spec the node could not run is refused inline, naming the key.
    page.get_by_test_id("component-name").fill("no-image")
    page.get_by_test_id("component-kind").select_option("container")
    page.get_by_test_id("component-command").fill("")
    page.get_by_test_id("component-spec").fill("{}")
    page.get_by_test_id("component-add").click()
    expect(page.get_by_test_id("component-error")).to_contain_text("invalid_component")
    expect(page.get_by_test_id("component-error")).to_contain_text("image")
    # Assign 1.0.0 to the node.
    page.locator(f'#assign-node option[value="{node_id}"]').wait_for(state="attached")
    page.get_by_test_id("assign-node").select_option(node_id)
    page.locator('#assign-component option[value="ticker"]').wait_for(state="attached")
    page.get_by_test_id("assign-component").select_option("ticker")
    page.locator('#assign-version option[value="1.0.0"]').wait_for(state="attached")
    page.get_by_test_id("assign-version").select_option("1.0.0")
    page.get_by_test_id("assign-run").click()
    expect(page.get_by_test_id("assign-done")).to_contain_text(f"ticker 1.0.0 assigned to {node_id}")
    on_node = page.locator(f'[data-testid="component-node-row"][data-name="ticker"][data-node="{node_id}"]')
    expect(on_node.get_by_test_id("component-node-version")).to_contain_text("1.0.0")
    desired = api(cloud_url, admin_token, f"/api/nodes/{node_id}/desired")
    ticker = [c for c in desired.get("components", []) if c["name"] == "ticker"]
    assert ticker and ticker[0]["artifact"]["size"] == archive.stat().st_size, desired
    # The node fetches and runs it: its state and output come back to the page.
    expect(on_node.get_by_test_id("component-state")).to_contain_text("healthy", timeout=SLOW)
    expect(on_node.get_by_test_id("component-log")).to_contain_text("tick", timeout=SLOW)

    # 6. The function's output arrives in the live message view.
    goto(page, "nav-messages")
    page.locator(f'#messages-node option[value="{node_id}"]').wait_for(state="attached")
    page.get_by_test_id("messages-node").select_option(node_id)
    processed = page.locator('[data-testid="message"][data-topic^="processed/"]').first
    expect(processed).to_be_visible(timeout=SLOW)
    expect(processed.get_by_test_id("message-payload")).to_contain_text("demo-tag")
    expect(processed.get_by_test_id("message-payload")).to_contain_text("temperature")

    # The device's last telemetry on the devices page.
    goto(page, "nav-devices")
    expect(device_row.get_by_test_id("device-telemetry")).to_contain_text("temperature", timeout=SLOW)

    # The node's page: status, charts, the rule with the node's counters.
    goto(page, "nav-nodes")
    row.get_by_test_id("node-link").click()
    expect(page.get_by_test_id("node-summary")).to_contain_text("online")
    expect(page.get_by_test_id("chart-cpu").locator("svg")).to_be_visible()
    expect(page.locator('#node-rules [data-id="to-function"]')).to_be_visible()
    expect(page.locator('#node-components [data-name="ticker"]')).to_be_visible()
    expect(page.get_by_test_id("live-messages").locator('[data-topic^="processed/"]').first).to_be_visible(timeout=SLOW)
    assert device.alive(), f"the simulated device stopped:\n{device.output()}"

    # 6b. A bad revision: ticker 2.0.0 exits at once. The node applies it,
    #     sees the component fail within its grace, returns to the last
    #     good revision (1.0.0 runs again) and the node's page says why.
    send(cloud_url, admin_token, "POST", "/api/components",
         {"name": "ticker", "version": "2.0.0", "command": "/bin/sh", "args": ["-c", "exit 3"],
          "update_grace": "2s"})
    send(cloud_url, admin_token, "PUT", f"/api/nodes/{node_id}/components/ticker", {"version": "2.0.0"})
    expect(page.get_by_test_id("revisions-state")).to_have_text("failed", timeout=SLOW)
    expect(page.get_by_test_id("revisions-state-error")).to_contain_text("ticker", timeout=SLOW)
    bad = page.locator('[data-testid="revision-row"]').first
    expect(bad.get_by_test_id("revision-summary")).to_contain_text("2.0.0")
    expect(bad.get_by_test_id("revision-result")).to_have_text("rolled back", timeout=SLOW)
    bad.get_by_test_id("revision-show").click()
    failed_item = page.locator('[data-testid="revision-item"][data-result="failed"]')
    expect(failed_item).to_contain_text("ticker")
    expect(failed_item).to_contain_text("version 2.0.0")
    # 6c. Drift: a rule made through the node's own API shows as an item
    #     of its own, with the node marked as differing from its revision.
    node_token = wait_for("the node's API token", lambda: (
        Path(workdir, "node", "api-token").read_text().strip()
        if Path(workdir, "node", "api-token").exists() else None), node)
    send(f"http://127.0.0.1:{ports['http']}", node_token, "POST", "/api/rules",
         {"id": "local-only", "sql": 'SELECT * FROM "local/#"', "actions": []})
    expect(page.get_by_test_id("node-drift-badge")).to_be_visible(timeout=SLOW)
    expect(page.locator('[data-testid="node-local-item"][data-kind="rule"][data-name="local-only"]')) \
        .to_contain_text("node's API", timeout=SLOW)
    ticker_row = page.locator('#node-components [data-name="ticker"]')
    expect(ticker_row.get_by_test_id("node-component-version")).to_contain_text("2.0.0")
    expect(ticker_row.get_by_test_id("node-component-running")).to_have_text("runs 1.0.0", timeout=SLOW)
    expect(ticker_row.get_by_test_id("component-state")).to_contain_text("healthy", timeout=SLOW)
    # 6d. Marked local-only on the node, the rule shows so; the deployments
    #     page lists the node as failed (its desired revision was rolled
    #     back), says why and that it differs from its revision.
    send(f"http://127.0.0.1:{ports['http']}", node_token, "PUT", "/api/local-only/rule/local-only", {})
    expect(page.locator('[data-testid="node-local-item"][data-name="local-only"]')
           .get_by_test_id("node-local-only")).to_be_visible(timeout=SLOW)
    goto(page, "nav-deployments")
    row = page.locator(f'[data-testid="deployment-row"][data-id="{node_id}"]')
    expect(row.get_by_test_id("deployment-row-state")).to_have_text("failed", timeout=SLOW)
    expect(row.get_by_test_id("deployment-error")).to_contain_text("ticker")
    expect(row.get_by_test_id("deployment-differs")).to_be_visible()
    expect(row.locator('[data-testid="deployment-local-item"][data-name="local-only"]')) \
        .to_contain_text("kept local-only", timeout=SLOW)

    # 7. A read-only API token made on the tokens page is shown once, reads
    #    but cannot change anything, and stops working once revoked.
    goto(page, "nav-tokens")
    page.get_by_test_id("token-name").fill("dashboard")
    page.get_by_test_id("token-scope").select_option("read")
    page.get_by_test_id("token-create").click()
    expect(page.get_by_test_id("token-secret")).to_be_visible()
    read_token = page.get_by_test_id("token-secret").text_content()
    token_row = page.locator('[data-testid="token-row"][data-name="dashboard"]')
    expect(token_row.get_by_test_id("token-scope-cell")).to_have_text("read")
    assert api(cloud_url, read_token, "/api/nodes"), "a read token lists the nodes"
    req = urllib.request.Request(
        cloud_url + "/api/nodes", data=b'{"name":"by-reader"}', method="POST",
        headers={"Authorization": f"Bearer {read_token}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 403
    page.once("dialog", lambda d: d.accept())
    token_row.get_by_test_id("token-revoke").click()
    expect(token_row).to_have_count(0)
    with pytest.raises(urllib.error.HTTPError) as revoked:
        api(cloud_url, read_token, "/api/nodes")
    assert revoked.value.code == 401
